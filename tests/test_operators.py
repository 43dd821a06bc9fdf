"""What operators see: the records of the route, and, on real ``dask scheduler`` and ``dask worker``
processes, the ``/metrics`` of both, the ``/dedupgraph`` page and ``dedupgraph status``, while a
computation holds a hoisted object.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dask.array as da
import pytest
from dask.base import collections_to_expr
from dask.utils import format_bytes

from dedupgraph.routes.distributed.records import (
    DEDUPLICATED,
    FAILED,
    LAYERS_DECLINED,
    NOTHING_LARGE,
    UNCHANGED,
    GraphRecord,
    HoistedObject,
    Observations,
)
from dedupgraph.routes.distributed.submissions import Route, Submission
from dedupgraph.tools.dashboard import render
from dedupgraph.tools.observe import HeldObject, Snapshot

from payloads import Mapper

BIN = Path(sys.executable).parent
DEADLINE = 120  # seconds: generous, on a machine shared with other test runs


# --- the route's records, on graphs as distributed's materialization gets them


def add_len(block, m):
    return block + len(m.s) % 7


def _original():
    import distributed.scheduler

    return inspect.unwrap(distributed.scheduler._materialize_graph)


def _sent(coll):
    from distributed.protocol import deserialize, serialize, to_serialize

    header, frames = serialize(to_serialize(collections_to_expr([coll]).optimize()), on_error="raise")
    return deserialize(header, frames)


def _routed(coll, submission=None):
    records: list[GraphRecord] = []
    out, _ = Route(observer=records.append).handle(_original(), _sent(coll), False, submission or Submission(ordering={}))
    (record,) = records
    return out, record


def test_one_record_per_graph_with_what_was_hoisted_and_the_routes_cpu_time():
    obj = Mapper(30_000)
    out, record = _routed(da.ones((12, 4), chunks=(1, 4)).map_blocks(add_len, obj))
    (hoisted,) = record.hoisted
    assert record.outcome == DEDUPLICATED and record.cause == "" and record.fallbacks == ()
    assert hoisted.key in out and hoisted.label == "Mapper" and hoisted.tasks == 12
    assert hoisted.nbytes > 200_000 and record.bytes_removed == hoisted.nbytes * 11
    assert record.tasks == len(out) - 1 and record.cpu_seconds > 0


def test_the_outcome_says_why_a_graph_stayed_as_it_was():
    _, small = _routed(da.ones((12, 4), chunks=(1, 4)) + 1)
    assert (small.outcome, small.cause, small.hoisted) == (UNCHANGED, NOTHING_LARGE, ())
    _, declined = _routed(da.ones((12, 4), chunks=(4, 4)).rechunk((1, 4)).map_blocks(add_len, Mapper(30_000)))
    assert declined.outcome == DEDUPLICATED and declined.fallbacks == (LAYERS_DECLINED,)  # the pass ran


def test_a_failure_of_the_route_is_recorded_with_its_cause(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("dedupgraph.routes.distributed.submissions.keep_plain", broken)
    # a graph the pass rewrites after distributed materialized it (the layers decline it)
    out, record = _routed(da.ones((12, 4), chunks=(4, 4)).rechunk((1, 4)).map_blocks(add_len, Mapper(30_001)))
    assert (record.outcome, record.cause, record.hoisted) == (FAILED, "pass", ())
    assert not any(str(key).startswith("dedup-") for key in out)  # as distributed materialized it
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "dedupgraph scheduler route failed; graph left as distributed materialized it"
    ]


def test_an_observer_that_raises_never_fails_the_graph(caplog):
    def raising(record):
        raise ValueError("observer broken")

    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    route = Route(observer=raising)
    out, _ = route.handle(_original(), _sent(da.ones((12, 4), chunks=(1, 4)).map_blocks(add_len, Mapper(30_002))), False, Submission(ordering={}))
    assert any(str(key).startswith("dedup-") for key in out)
    assert any("recording a graph" in r.getMessage() for r in caplog.records)


def test_the_account_is_bounded_and_totals_every_graph():
    account = Observations(history=3, known_keys=2)
    for i in range(5):
        hoisted = (HoistedObject(f"dedup-T-{i:032x}", "T", 1000, 3),)
        account.add(GraphRecord(DEDUPLICATED, tasks=3, hoisted=hoisted, cpu_seconds=0.5, fallbacks=(LAYERS_DECLINED,)))
    account.add(GraphRecord(FAILED, "settings"))
    totals = account.totals()
    assert [r.number for r in account.history()] == [4, 5, 6]
    assert len(account.known()) == 2
    assert (totals.graphs_seen, totals.graphs_deduplicated, totals.bytes_removed) == (6, 5, 5 * 2000)
    assert totals.objects_hoisted == {"T": 5} and totals.failures == {"settings": 1}
    assert totals.fallbacks == {LAYERS_DECLINED: 5} and totals.cpu_seconds == 2.5


def test_the_page_escapes_every_value():
    from dedupgraph.routes.distributed.records import Totals

    evil = "<script>alert(1)</script>"
    held = HeldObject(f"dedup-{evil}-" + "0" * 32, evil, "0" * 32, 1000, True, 3, (evil,))
    graph = GraphRecord(DEDUPLICATED, evil, 3, (HoistedObject(evil, evil, 1000, 3),), number=1)
    page = render(Snapshot(True, None, (held,), Totals(objects_hoisted={evil: 1}, failures={evil: 1}), (graph,)))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_scheduler_without_the_route_says_why():
    import asyncio

    from distributed import Scheduler

    from dedupgraph.tools.observe import on_scheduler

    async def main():
        async with Scheduler(dashboard_address=":0") as scheduler:  # no preload: no route
            return on_scheduler(scheduler)

    found = asyncio.run(main())
    assert found["route"] is False and "not switched on" in found["problem"] and not found["held"]


def test_a_failing_collector_leaves_out_its_own_metrics_only(monkeypatch, caplog):
    import asyncio

    from distributed import Scheduler
    from prometheus_client import generate_latest

    def broken(scheduler):
        raise RuntimeError("boom")

    async def main():
        async with Scheduler(dashboard_address=":0", preload=["dedupgraph.scheduler"]):
            monkeypatch.setattr("dedupgraph.tools.metrics.snapshot", broken)
            return generate_latest().decode()

    text = asyncio.run(main())
    assert "dedupgraph_graphs_seen_total" not in text and "python_info" in text


# --- real processes: dask scheduler, dask worker, a client that holds a computation


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "DEDUPGRAPH_"))}
    return {**env, "DASK_DEDUPGRAPH__ENABLED": "True", **extra}


def _until(check, what: str):
    """``check()``'s first truthy answer, asked again until the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` and ``dask worker --nworkers 2``, each with its web server on 127.0.0.1; its scheduler file."""
    root = tmp_path_factory.mktemp("operators")
    shm = tempfile.mkdtemp(prefix="test-dedupgraph-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    env = _environment(DEDUPGRAPH_SHM_DIR=shm)
    file = root / "scheduler.json"
    common = ["--scheduler-file", str(file), "--dashboard-address", "127.0.0.1:0"]
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "scheduler.log", "w"),
        )
    ]
    try:
        _until(lambda: file.exists() and file.read_text().strip(), "the scheduler to start")
        procs.append(
            subprocess.Popen(
                [str(BIN / "dask"), "worker", "--nworkers", "2", "--nthreads", "1", "--memory-limit", "1GiB", *common],
                env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "worker.log", "w"),
            )
        )
        yield file
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(shm, ignore_errors=True)


CLIENT = """
    import json, sys
    import dask, dask.array as da, numpy as np, pandas as pd
    from distributed import Client, Event, futures_of, wait
    from dedupgraph.core.fingerprint import content_fingerprint

    class Mapper:  # defined here: pickled by value, its type is Mapper everywhere
        def __init__(self, rows):
            self.s = pd.Series(range(rows))

    def held_len(block, m):
        Event(EVENT).wait(timeout=600)  # the computation holds the hoisted object until the test says
        return block + len(m.s)

    file, share, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    EVENT = f"dedupgraph-hold-{rows}"
    mapper = Mapper(rows)
    with Client(scheduler_file=file) as client:
        client.wait_for_workers(2, timeout=120)
        workers = {a: w["services"]["dashboard"] for a, w in client.scheduler_info()["workers"].items()}
        with dask.config.set({"dedupgraph.share": share, "dedupgraph.share-min-bytes": "64 KiB"}):
            out = da.zeros((8, 4), chunks=(1, 4)).map_blocks(held_len, mapper, meta=np.empty((0, 0))).persist()
        print(json.dumps({"nbytes": content_fingerprint(mapper).nbytes, "workers": workers}), flush=True)
        sys.stdin.readline()
        Event(EVENT).set()
        wait(futures_of(out))
        print(json.dumps(int(out.sum().compute())), flush=True)
"""


@contextmanager
def holding(file: Path, share: str, rows: int):
    """A client process that persists an array whose tasks carry a Mapper, held until the block ends; what it hoists."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CLIENT), str(file), share, str(rows)],
        env=_environment(), cwd=file.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            first = lines.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError("the client did not persist in time") from None
        yield json.loads(first)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert json.loads(lines.get(timeout=DEADLINE)) == 8 * 4 * rows
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-4000:]


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return response.read().decode()


def _scheduler(file: Path) -> tuple[str, int]:
    identity = json.loads(file.read_text())
    return identity["address"], identity["services"]["dashboard"]


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text page, if it is there."""
    shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{shown}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, flags=re.M)
    return float(match.group(1)) if match else None


_HELD_ROW = re.compile(
    r"<tr><td>(?P<label>[^<]*)</td><td class='n'>(?P<size>[^<]*)</td><td class='n'>(?P<tasks>\d+)</td>"
    r".*?<code>(?P<digest>[0-9a-f]{32})</code></td><td><code>(?P<key>[^<]*)</code>"
)


def _held_rows(page: str) -> dict[str, dict[str, str]]:
    """The page's table of hoisted objects held now: key -> its cells."""
    return {m.group("key"): m.groupdict() for m in _HELD_ROW.finditer(page.split("Since the route")[0])}


def test_the_page_metrics_and_status_show_a_held_object_with_its_type_and_size(cluster):
    address, port = _scheduler(cluster)
    with holding(cluster, "process", 30_000) as hoisted:
        # the scheduler pickles the object again (its class by value): the size may differ by a few bytes
        rows = _until(lambda: _held_rows(_get(port, "/dedupgraph")), "the page to show the object")
        ((key, row),) = rows.items()
        assert key.startswith("dedup-Mapper-") and key.endswith(row["digest"])
        assert (row["label"], row["tasks"]) == ("Mapper", "8")  # its type; the eight tasks that use it

        metrics = _get(port, "/metrics")
        nbytes = _sample(metrics, "dedupgraph_held_bytes", type="Mapper")
        assert nbytes is not None and abs(nbytes - hoisted["nbytes"]) < 0.01 * hoisted["nbytes"]
        size = format_bytes(int(nbytes))
        assert row["size"] == size  # the page and /metrics agree
        assert _sample(metrics, "dedupgraph_held_objects", type="Mapper") == 1
        assert _sample(metrics, "dedupgraph_objects_hoisted_total", type="Mapper") >= 1
        assert _sample(metrics, "dedupgraph_bytes_removed_total") >= nbytes * 7
        assert _sample(metrics, "dedupgraph_graphs_deduplicated_total") >= 1
        assert _sample(metrics, "dedupgraph_route_cpu_seconds_total") > 0
        assert _sample(metrics, "dedupgraph_failures_total", cause="pass") == 0

        done = subprocess.run(
            [str(BIN / "dedupgraph"), "status", address], env=_environment(), capture_output=True, text=True, timeout=DEADLINE
        )
        assert done.returncode == 0, done.stderr[-4000:]
        line = next(line for line in done.stdout.splitlines() if line.rstrip().endswith(key))
        assert line.split()[0] == "Mapper" and size in line
        assert "scheduler route on" in done.stdout and "deduplicated" in done.stdout

    _until(lambda: key not in _held_rows(_get(port, "/dedupgraph")), "the object to be released")
    assert key in _get(port, "/dedupgraph").split("Since the route")[1]  # the last graphs still say what was hoisted


def test_the_workers_metrics_show_what_share_host_maps(cluster):
    _, port = _scheduler(cluster)
    with holding(cluster, "host", 30_100) as hoisted:
        rows = _until(lambda: _held_rows(_get(port, "/dedupgraph")), "the page to show the object")
        assert [key.split("-")[:3] for key in rows] == [["dedup", "host", "Mapper"]]  # one copy per host
        page = _get(port, "/dedupgraph")
        (size,) = [row["size"] for row in rows.values()]
        assert f"In shared memory (share=\"host\"): 1 of them, {size} on 1 host, one copy per host." in page

        def mapped():
            pages = [_get(worker_port, "/metrics") for worker_port in hoisted["workers"].values()]
            counts = [_sample(page, "dedupgraph_shm_segments_mapped") for page in pages]
            return (sum(counts), pages) if sum(counts) >= 1 else None

        segments, pages = _until(mapped, "a worker to map the segment")
        assert segments >= 1
        assert sum(_sample(page, "dedupgraph_shm_mapped_bytes") for page in pages) >= 240_000
        assert sum(_sample(page, "dedupgraph_shm_segments_created_total") for page in pages) >= 1
        # the host's segments once, the same on every worker of the host (both share one segment directory)
        host_bytes = {_sample(page, "dedupgraph_shm_host_bytes") for page in pages}
        assert len(host_bytes) == 1 and host_bytes.pop() >= 240_000


def test_status_of_an_unreachable_scheduler_says_so():
    done = subprocess.run(
        [str(BIN / "dedupgraph"), "status", "tcp://127.0.0.1:9", "--timeout", "2"],
        env=_environment(), capture_output=True, text=True, timeout=DEADLINE,
    )
    assert done.returncode == 1 and "cannot connect" in done.stdout
