"""A client whose scheduler or workers run another dedupgraph: one clear warning at connect time, the pass off.

Graphs refer to dedupgraph's functions by name, and those names may move
between versions (docs/how-it-works.rst, "Names in graphs"). Real ``dask
scheduler`` and ``dask worker`` processes here report another version:
their ``dedupgraph.version.__version__`` is changed before distributed's
command line starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import pytest
from dask import delayed
from distributed import Client

import dedupgraph
import dedupgraph.routes.distributed.client as client_side
from dedupgraph.once import Once

OTHER = "0.0.0-other"
BIG = bytes(range(256)) * 1024


def _process(kind: str, version: str | None, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    patch = f"import dedupgraph.version as v; v.__version__ = {version!r}; " if version else ""
    code = f"{patch}from distributed.cli.dask_{kind} import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _cluster(root: Path, scheduler_version: str | None, worker_versions: list[str | None]):
    file = root / "scheduler.json"
    common = ["--scheduler-file", str(file)]
    procs = [_process("scheduler", scheduler_version, ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", *common], root)]
    try:
        deadline = time.monotonic() + 60
        while not (file.exists() and file.read_text().strip()):
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        json.loads(file.read_text())
        for version in worker_versions:
            procs.append(_process("worker", version, ["--nthreads", "1", "--no-nanny", *common], root))
        with Client(scheduler_file=str(file), set_as_default=False) as c:
            c.wait_for_workers(len(worker_versions), timeout=60)
        yield str(file)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def other_scheduler(tmp_path_factory):
    yield from _cluster(tmp_path_factory.mktemp("other-scheduler"), OTHER, [None])


@pytest.fixture(scope="module")
def other_worker(tmp_path_factory):
    yield from _cluster(tmp_path_factory.mktemp("other-worker"), None, [None, OTHER])


@pytest.fixture
def fresh_warning(monkeypatch):
    """The once-per-process warning, as in a new process."""
    monkeypatch.setattr(client_side, "_problem_told", Once())


def _tasks():
    return [delayed(bytes.count)(BIG, i) for i in range(8)]


def _connect_and_compute(file: str) -> tuple[list[warnings.WarningMessage], bool, list[int]]:
    dedupgraph.enable()
    with dask.config.set({"distributed.client.preload": ["dedupgraph.preload"]}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            with Client(scheduler_file=file, set_as_default=False) as c:
                on = isinstance(dask.config.get("delayed_optimize"), dedupgraph.Deduplicator)
                results = c.gather(c.compute(_tasks()))
    return [w for w in record if "dedupgraph" in str(w.message)], on, results


def _the_one_warning_of_plain_dask(file: str) -> str:
    """Connect to the cluster of ``file`` and compute: plain dask's results, the pass off, and one warning (its text)."""
    told, on, results = _connect_and_compute(file)
    assert not on
    assert results == [BIG.count(i) for i in range(8)]
    assert len(told) == 1
    return str(told[0].message)


def test_a_scheduler_with_another_version_is_named_at_connect_time_and_the_pass_stays_off(other_scheduler, fresh_warning):
    message = _the_one_warning_of_plain_dask(other_scheduler)
    assert f"runs dedupgraph {OTHER}, this process {dedupgraph.__version__}" in message
    assert "the pass stays off" in message and f"install dedupgraph {dedupgraph.__version__}" in message


def test_a_worker_with_another_version_is_named_at_connect_time_and_the_pass_stays_off(other_worker, fresh_warning):
    message = _the_one_warning_of_plain_dask(other_worker)
    assert "1 of 2 workers" in message and f"({OTHER})" in message and "the pass stays off" in message.lower()


def test_the_same_version_everywhere_switches_the_pass_on(tmp_path, fresh_warning):
    for file in _cluster(tmp_path, None, [None]):
        told, on, results = _connect_and_compute(file)
        assert on and told == []
        assert results == [BIG.count(i) for i in range(8)]
