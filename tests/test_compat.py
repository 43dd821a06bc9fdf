"""A dask without the internals the pass needs: the pass turns itself off, with one warning."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from dedupgraph.compat import REQUIRED, missing_internals


def test_this_dask_has_everything():
    assert missing_internals() == ()
    assert "_execute_subgraph" in REQUIRED


def test_missing_internal_switches_the_pass_off_with_one_warning():
    script = textwrap.dedent(
        """
        import warnings
        import dask
        from dask import delayed
        import dask._task_spec
        del dask._task_spec._execute_subgraph  # as if this dask release had renamed it
        import dedupgraph
        big = list(range(40_000))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            with dedupgraph.enable():
                for _ in range(3):
                    assert dask.compute(*[delayed(len)(big) for _ in range(4)]) == (40_000,) * 4
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(len(messages))
        print(messages[0])
        # the pass off: the hint's observer sees this graph and must not fail it
        assert dask.compute(*[delayed(len)(big) for _ in range(400)], scheduler="sync") == (40_000,) * 400
        try:
            dedupgraph.inspect([delayed(len)(big)])
        except RuntimeError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    count, message, inspect_error = out.splitlines()[:3]
    assert count == "1"
    assert message.startswith("dedupgraph is switched off: dask ")
    assert "dask._task_spec._execute_subgraph" in message
    assert inspect_error.startswith("dedupgraph.inspect cannot read this dask's graphs: it lacks dask._task_spec._execute_subgraph")
