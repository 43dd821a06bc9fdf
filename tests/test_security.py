"""Security notes of the README, checked: no unpickling, no evaluation, one environment variable."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import dask
import pytest
from dask import delayed

import dedupgraph
from dedupgraph.core.pipeline import task_graph

from payloads import Mapper, optimized_graph, uses_mapper

REPO = Path(__file__).resolve().parent.parent


def _refuse(*args, **kwargs):
    raise AssertionError("dedupgraph unpickled something")


def _refused_from_dedupgraph(real):
    """``real``, except when called from one of dedupgraph's modules."""

    def guarded(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__", "").split(".")[0] == "dedupgraph":
            raise AssertionError("dedupgraph unpickled something")
        return real(*args, **kwargs)

    return guarded


UNPICKLERS = [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (cloudpickle, "loads"), (cloudpickle, "load")]


def test_the_pass_never_unpickles(monkeypatch):
    m = Mapper()
    graph = optimized_graph(*[delayed(uses_mapper)(i, m) for i in range(4)])
    for module, name in UNPICKLERS:  # nothing at all may unpickle while the pass runs
        monkeypatch.setattr(module, name, _refuse)
    out = dedupgraph.Deduplicator()(graph, list(graph))
    (key,) = [k for k in out if str(k).startswith("dedup-")]
    # the graph holds the user's very object, not a copy made from bytes
    assert out[key].value is m


def test_inspect_and_deduplicate_never_unpickle(monkeypatch):
    # they run dask's own optimization, whose tokenizer may round-trip pickles
    # (dask 2025.5 does): refused only for calls made by dedupgraph's code
    for module, name in UNPICKLERS:
        monkeypatch.setattr(module, name, _refused_from_dedupgraph(getattr(module, name)))
    m = Mapper()
    colls = [delayed(uses_mapper)(i, m) for i in range(4)]
    (deduped,) = dedupgraph.deduplicate(colls, client=False)
    graph = task_graph(dict(deduped[0].__dask_graph__()))
    assert [node.value for k, node in graph.items() if str(k).startswith("dedup-")] == [m]
    assert dedupgraph.inspect(colls).summary.objects == 1


def test_settings_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    m = Mapper()
    colls = [delayed(uses_mapper)(i, m) for i in range(3)]
    with dedupgraph.enable(exclude=[code, "os.system"]):
        assert dask.compute(*colls, scheduler="sync") == tuple(uses_mapper(i, m) for i in range(3))
    for name in ("min_bytes", "hint_bytes"):
        with pytest.raises(ValueError, match=name.replace("_", "-")):
            dedupgraph.Settings.from_config(**{name: code})
    with dask.config.set({"dedupgraph.exclude": code, "dedupgraph.dry-run": code}):
        with pytest.raises(ValueError, match="dry-run"):
            dedupgraph.Settings.from_config()
    assert not marker.exists()


def test_the_startup_hook_reads_one_variable_and_nothing_else():
    """The .pth line as site runs it, with an environment that records what is read."""
    script = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[2])
        class Recording(dict):
            read = set()
            def get(self, key, default=None):
                self.read.add(key)
                return super().get(key, default)
            def __getitem__(self, key):
                self.read.add(key)
                return super().__getitem__(key)
            def __contains__(self, key):
                self.read.add(key)
                return super().__contains__(key)
        os.environ = Recording({"DASK_DEDUPGRAPH__ENABLED": sys.argv[1], "SECRET_TOKEN": "x", "PATH": "/bin"})
        exec(compile(open(sys.argv[3]).read(), "dedupgraph_startup.pth", "exec"))
        print(sorted(Recording.read), "dedupgraph_startup" in sys.modules, "dask" in sys.modules)
        """
    )
    pth = str(REPO / "dedupgraph_startup.pth")
    for value, hooked in (("", "False"), ("True", "True")):
        done = subprocess.run(
            [sys.executable, "-S", "-c", script, value, str(REPO), pth],
            capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["['DASK_DEDUPGRAPH__ENABLED']", hooked, "False"]
