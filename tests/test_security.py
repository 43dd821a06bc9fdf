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
from dedupgraph.optimizer import task_graph

from payloads import Mapper, optimized_graph, uses_mapper

REPO = Path(__file__).resolve().parent.parent


def _refuse(*args, **kwargs):
    raise AssertionError("dedupgraph unpickled something")


@pytest.fixture
def no_unpickling(monkeypatch):
    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "loads", _refuse)
        monkeypatch.setattr(module, "load", _refuse)
    monkeypatch.setattr(pickle, "Unpickler", _refuse)


def test_the_pass_inspect_and_deduplicate_never_unpickle(no_unpickling):
    m = Mapper()
    colls = [delayed(uses_mapper)(i, m) for i in range(4)]
    graph = optimized_graph(*colls)
    out = dedupgraph.Deduplicator()(graph, list(graph))
    (key,) = [k for k in out if str(k).startswith("dedup-")]
    # the graph holds the user's very object, not a copy made from bytes
    assert out[key].value is m
    (deduped,) = dedupgraph.deduplicate(colls, client=False)
    assert [node.value for k, node in task_graph(dict(deduped[0].__dask_graph__())).items() if k == key] == [m]
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
