"""share="host" on real clusters: one segment per host, mapped by every worker process.

Each cluster here keeps its segments in a directory of /dev/shm of its own
(``DEDUPGRAPH_SHM_DIR``), so that other test runs on the same machine cannot
make these assertions wrong, and assertions about "nothing left" can be exact.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, wait

import dedupgraph
from segment_dirs import segment_dir
from dedupgraph.placement import host as host_share
from dedupgraph.placement import segments as shared_memory
from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.core.runtime import SharedReadOnlyError
from dedupgraph.placement import in_graph as placement_for
from dedupgraph.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX shared memory: Linux only")

TASKS = 12


class Table:
    """A lookup model: numeric pandas columns and a numpy array (4 MiB), tiny to ``dask.sizeof``."""

    def __init__(self, rows: int = 2**17, seed: float = 0.0) -> None:
        self.frame = pd.DataFrame({"a": np.arange(rows, dtype="f8") + seed, "b": np.arange(rows, dtype="i8")})
        self.weights = np.linspace(seed, 1.0, rows * 2)


def score(block, table, pause=0.0):
    time.sleep(pause)
    return block + table.frame["a"].iloc[-1] + table.weights[-1]


def segment_of(array: np.ndarray) -> str | None:
    """The dedupgraph segment that ``array``'s memory is mapped from in this process, if any."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith(shared_memory.PREFIX):
                low, high = (int(x, 16) for x in parts[0].split("-"))
                if low <= address < high:
                    return parts[5]
    return None


def probe(i, table, pause=0.1):
    """What a task sees of the object: its worker, where its memory is, and a checksum."""
    time.sleep(pause)
    return {
        "pid": os.getpid(),
        "segment": segment_of(table.weights),
        "frame_segment": segment_of(table.frame["a"].to_numpy()),
        "writeable": table.weights.flags.writeable,
        "value": i + float(table.weights.sum()) + float(table.frame["b"].sum()),
    }


def expected_probes(table, n=TASKS):
    return [i + float(table.weights.sum()) + float(table.frame["b"].sum()) for i in range(n)]


def overwrite(i, table):
    table.weights[0] = 42.0
    return i


def cluster(n_workers: int, **kwargs) -> LocalCluster:
    kwargs.setdefault("memory_limit", "1GiB")
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, **kwargs)


def host_graph(graph, settings: Settings):
    """What the routes make of ``graph`` under ``settings``: the pass, placing as ``share`` says."""
    return deduplicate_graph(graph, settings, place=placement_for(settings))


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def eventually_empty(directory: Path, timeout: float = 30.0, collect_on: Client | None = None) -> list[str]:
    """The files left once releases had ``timeout`` seconds to arrive (they travel asynchronously).

    ``collect_on``: also collect garbage in that client's workers, each time.
    """
    deadline = time.monotonic() + timeout
    while files(directory) and time.monotonic() < deadline:
        gc.collect()
        if collect_on is not None:
            collect_on.run(gc.collect)
        time.sleep(0.05)
    return files(directory)


@pytest.fixture(scope="module")
def shm():
    with segment_dir() as path:
        yield path


@pytest.fixture(scope="module")
def client(shm):
    with cluster(2) as lc, Client(lc) as c:
        yield c
    assert files(shm) == [], "segments left after the cluster closed"


# --- results, and one mapped copy per host


def test_config_route_one_segment_mapped_read_only_by_every_worker(client, shm):
    table = Table()
    with dedupgraph.enable(share="host"):
        probes = dask.compute(*[delayed(probe)(i, table) for i in range(TASKS)])
    assert [p["value"] for p in probes] == expected_probes(table)
    assert len({p["pid"] for p in probes}) >= 2, "the tasks ran on one worker only"
    segments = {p["segment"] for p in probes} | {p["frame_segment"] for p in probes}
    assert len(segments) == 1 and None not in segments, segments  # numpy and pandas buffers: one segment
    assert not any(p["writeable"] for p in probes)
    assert eventually_empty(shm) == []  # the hoisted key released: so is its segment
    with dedupgraph.enable(share="host"):
        held = client.persist([delayed(probe)(i, table, 0.0) for i in range(TASKS)])
    wait(held)
    # results held: workers keep the hoisted task (for its dependents), but not its segment
    assert eventually_empty(shm) == []
    assert [p["value"] for p in dask.compute(*held)] == expected_probes(table)


def test_arrays_bags_and_local_schedulers_give_plain_results(client, shm):
    table = Table(seed=1.0)
    blocks = da.arange(24, chunks=2).map_blocks(score, table, meta=np.array((), dtype="f8"))
    bag = db.from_sequence(range(8), npartitions=8).map(lambda x, t: x + t.weights[-1], table)
    plain = dask.compute(blocks, bag, scheduler="sync")
    with dedupgraph.enable(share="host"):
        for scheduler in (None, "sync", "threads"):  # "processes": see the pickling test below
            got = dask.compute(blocks, bag, scheduler=scheduler)
            np.testing.assert_array_equal(got[0], plain[0])
            assert got[1] == plain[1]
        # in this process the tasks get the object itself, as with share="process"
        assert dask.compute(*[delayed(lambda i, t: t is table)(i, table) for i in range(2)], scheduler="threads") == (True, True)
    # deduplicate's route: the object scattered, the same results
    deduped = dedupgraph.deduplicate(blocks, bag, client=client, share="host")
    assert any(str(k).startswith("dedup-host-Table-") for k in dict(deduped[0].dask))
    got = dask.compute(*deduped)
    np.testing.assert_array_equal(got[0], plain[0])
    assert got[1] == plain[1]
    del deduped, got
    assert eventually_empty(shm) == []


def test_deduplicate_keeps_one_copy_per_host_while_the_collection_is_held(client, shm):
    table = Table(seed=2.0)
    probes = [delayed(probe)(i, table, 0.0) for i in range(TASKS)]
    for broadcast in (False, True):
        (deduped,) = dedupgraph.deduplicate(probes, client=client, broadcast=broadcast, share="host")
        (key,) = {k for d in deduped for k in dict(d.dask) if str(k).startswith("dedup-")}
        assert key.startswith("dedup-host-Table-")
        if broadcast:  # copies between workers carried tickets: the buffers are in shared memory already
            held = client.run(lambda dask_worker: [repr(v) for k, v in dask_worker.data.items() if k == key])
            assert all(held.values()) and all("mapped" in r for rs in held.values() for r in rs), held
        results = dask.compute(*deduped)
        assert [p["value"] for p in results] == expected_probes(table)
        segment = str(shm / shared_memory.segment_name(key.rsplit("-", 1)[1]))
        assert {p["segment"] for p in results} == {segment} and files(shm) == [os.path.basename(segment)]
        time.sleep(0.2)
        assert files(shm) == [os.path.basename(segment)], "the collection still holds it"
        del deduped, results
        assert eventually_empty(shm) == []
    (local,) = dedupgraph.deduplicate(probes, client=False, share="host")
    assert any(str(k).startswith("dedup-host-") for k in dict(local[0].dask))
    assert [p["value"] for p in dask.compute(*local)] == expected_probes(table)


def test_writing_to_a_shared_array_fails_with_numpys_read_only_error(client, shm):
    table = Table(seed=3.0)
    with dedupgraph.enable(share="host"), pytest.raises(ValueError, match="read-only") as caught:
        dask.compute(*[delayed(overwrite)(i, table) for i in range(4)])
    # The traceback holds the futures; on the workers, the failed tasks' frames hold views of
    # the arrays, in reference cycles that only a garbage collection in that process breaks.
    del caught
    assert eventually_empty(shm, collect_on=client) == []


def writes_its_own(i):
    own = np.zeros(3)
    own.flags.writeable = False
    own[0] = 1.0
    return i


def test_a_write_into_a_shared_buffer_says_that_dedupgraph_shares_it_and_how_to_opt_out(client, shm):
    table = Table(seed=5.0)
    writes = [delayed(overwrite)(i, table) for i in range(4)]
    with dedupgraph.enable(share="host"), pytest.raises(SharedReadOnlyError) as by_config:
        dask.compute(*writes)
    (deduped,) = dedupgraph.deduplicate(writes, client=client, share="host")
    with pytest.raises(SharedReadOnlyError) as by_scatter:
        dask.compute(*deduped)
    for caught in (by_config, by_scatter):
        message = str(caught.value)
        assert isinstance(caught.value, ValueError) and "assignment destination is read-only" in message
        for says in (f"{__name__}.overwrite", 'share="host"', "arr.copy()", "dedupgraph.keep_inline(obj)",
                     f"exclude=['{__name__}.Table']", 'share="process"'):
            assert says in message, says
    # a task that received no shared object keeps numpy's own error
    with dedupgraph.enable(share="host"), pytest.raises(ValueError, match="read-only") as own:
        dask.compute(*[delayed(probe)(i, table, 0.0) for i in range(4)], delayed(writes_its_own)(0))
    assert type(own.value) is ValueError
    del by_config, by_scatter, caught, own, deduped  # tracebacks hold futures (see the test above)
    assert eventually_empty(shm, collect_on=client) == []


def test_a_small_limit_falls_back_to_per_process_copies(client, shm):
    table = Table(seed=4.0)
    with dedupgraph.enable(share="host", share_limit=2**20):  # 1 MiB: below the 4 MiB object
        probes = dask.compute(*[delayed(probe)(i, table) for i in range(TASKS)])
    assert [p["value"] for p in probes] == expected_probes(table)
    assert {p["segment"] for p in probes} == {None}  # private copies, as with share="process"


def test_peak_host_memory_is_one_copy_with_host_and_one_per_worker_with_process(client, shm):
    """Measured from outside the workers: their PSS outside shared memory, plus the segments."""
    from dedupgraph.benchmarks.host_memory import HostMemory, Model, _warm_up, host_memory, work

    model = Model(24)
    x = da.zeros((8, 4), chunks=(1, 4))
    client.run(_warm_up)  # what the tasks import is not a copy of anything
    pids = list(client.run(os.getpid).values())
    copies = {}
    for share in ("host", "process"):
        assert eventually_empty(shm) == []
        idle = min(host_memory(pids, shm) for _ in range(5))
        with HostMemory(pids, shm) as memory, dedupgraph.enable(share=share):
            wait(client.persist(x.map_blocks(work, model, 0.3, meta=np.array(()))))
        copies[share] = (memory.peak - idle) / model.nbytes
    assert copies["host"] <= 1.3, copies  # 2 workers: one copy, in shared memory
    assert copies["process"] >= 1.7, copies  # 2 workers: one copy each


def test_a_worker_killed_mid_computation_gives_correct_results(client, shm):
    """The last test on this cluster: its fixture then checks that nothing is left after close."""
    table = Table(seed=7.0)
    with dedupgraph.enable(share="host"):
        futures = client.compute([delayed(probe)(i, table, 0.25) for i in range(8)])
    deadline = time.monotonic() + 60
    while sum(f.done() for f in futures) < 2 or not files(shm):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not all(f.done() for f in futures), "killed too late to be in the middle"
    victim = next(pid for pid in client.run(os.getpid).values())
    os.kill(victim, signal.SIGKILL)
    assert [p["value"] for p in client.gather(futures)] == expected_probes(table, 8)


def test_the_scheduler_route_shares_per_host_too():
    """Nothing switched on in the client: the scheduler's preload runs the pass, with its config."""
    from dedupgraph.routes.activation import SCHEDULER_PRELOADS_KEY, SCHEDULER_PRELOAD

    table = Table(seed=11.0)
    with segment_dir() as shm:
        with dask.config.set({SCHEDULER_PRELOADS_KEY: [SCHEDULER_PRELOAD], "dedupgraph.share": "host"}):
            with cluster(2) as lc, Client(lc):
                probes = dask.compute(*[delayed(probe)(i, table, 0.05) for i in range(8)])
        assert [p["value"] for p in probes] == expected_probes(table, 8)
        assert {os.path.dirname(p["segment"]) for p in probes} == {str(shm)}
        assert files(shm) == []


def test_what_has_no_large_buffers_or_is_opted_out_stays_per_process(caplog):
    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    from dask._task_spec import Task

    lookup = {i: str(i) for i in range(20_000)}  # pure Python: nothing out of band
    graph = {f"t{i}": Task(f"t{i}", max, i, lookup) for i in range(3)}
    out = host_graph(graph, Settings(share="host"))
    assert any(str(k).startswith("dedup-dict-") for k in out) and not any("dedup-host" in str(k) for k in out)
    assert "share='host': dict stays per process: 0 B of out-of-band buffers" in caplog.text
    table = Table(seed=5.0)
    graph = {f"t{i}": Task(f"t{i}", score, i, table) for i in range(3)}
    assert host_graph(graph, Settings(share="host", exclude=(f"{__name__}.Table",))) is graph
    hoisted = host_graph(graph, Settings(share="host"))
    assert any(str(k).startswith("dedup-host-Table-") for k in hoisted)
    assert host_graph(hoisted, Settings(share="host")) is hoisted  # idempotent


def test_fused_subgraph_inputs_and_inner_data_nodes_are_unwrapped():
    from dask._task_spec import DataNode, Task, TaskRef, _execute_subgraph

    table = Table(seed=6.0)
    graph = {}
    for i in range(3):
        inner = {
            "table": DataNode("table", table),
            f"out{i}": Task(f"out{i}", score, TaskRef("x"), TaskRef("table")),
            "x": Task("x", int, i),
        }
        graph[f"f{i}"] = Task(f"f{i}", _execute_subgraph, inner, f"out{i}", ())
    out = host_graph(graph, Settings(share="host"))
    assert any(str(k).startswith("dedup-host-Table-") for k in out)
    assert dask.get(out, [f"f{i}" for i in range(3)]) == dask.get(graph, [f"f{i}" for i in range(3)])


# --- lifecycle


def test_two_clusters_share_a_segment_by_content_and_crash_leftovers_are_swept():
    table = Table(seed=8.0)
    with segment_dir() as shm:
        orphan = _crashed_process_leftover()
        assert files(shm) == [orphan]
        with cluster(1) as first, Client(first) as a:
            probes = [delayed(probe)(i, table, 0.0) for i in range(4)]
            (held,) = dedupgraph.deduplicate(probes, client=a, share="host")
            assert [p["value"] for p in a.gather(a.compute(held))] == expected_probes(table, 4)
            (segment,) = files(shm)  # the first use of the directory in the worker removed the orphan
            assert segment != orphan
            with cluster(1) as second, Client(second) as b:
                with dedupgraph.enable(share="host"):
                    seen = b.gather(b.compute([delayed(probe)(i, table, 0.0) for i in range(4)]))
                assert {p["segment"] for p in seen} == {str(shm / segment)}
                assert files(shm) == [segment]
            # the second cluster is gone; the first still maps it, computes with it, then lets it go
            assert files(shm) == [segment]
            assert [p["value"] for p in a.gather(a.compute(held))] == expected_probes(table, 4)
            del held
            assert eventually_empty(shm) == []


def _crashed_process_leftover() -> str:
    """A segment whose only user was killed: what a crashed host leaves."""
    code = """
        import os, signal
        from dedupgraph.placement import segments as sm
        view = sm.create("ab" * 16, 4096, 0.5, lambda write: write(0, b"x" * 4096))
        print(sm.segment_name("ab" * 16), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL
    return child.stdout.strip()


def test_a_worker_on_another_host_pulls_the_bytes_and_publishes_them_there():
    """Two workers that do not share /dev/shm, as on two hosts: each host gets its own segment."""
    table = Table(seed=9.0)
    with segment_dir() as here, segment_dir() as there:
        workers = {
            name: {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": "1GiB", "env": {shared_memory.DIR_VARIABLE: str(d)}}}
            for name, d in (("here", here), ("there", there))
        }
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
        with SpecCluster(workers=workers, scheduler=scheduler) as sc, Client(sc) as c:
            c.wait_for_workers(2)
            with dedupgraph.enable(share="host"):
                probes = c.gather(c.compute([delayed(probe)(i, table, 0.15) for i in range(8)]))
            assert [p["value"] for p in probes] == expected_probes(table, 8)
            assert {os.path.dirname(p["segment"]) for p in probes} == {str(here), str(there)}
        assert files(here) == [] and files(there) == []


def test_buffers_travel_to_another_host_and_with_plain_pickles():
    """What a transfer to another host, a spill, or the local "processes" scheduler (cloudpickle) carry."""
    import cloudpickle

    from dedupgraph.core.fingerprint import content_fingerprint
    from dedupgraph.core.plan import Hoist, hoisted_key

    table = Table(seed=10.0)
    fp = content_fingerprint(table)
    shared = host_share.shared_value(Hoist(hoisted_key(fp), fp, ("a", "b"), table), Settings(share="host"))
    other_host = {"sender": {"address": "tcp://10.1.0.1:8786"}, "recipient": {"address": "tcp://10.1.0.2:8786"}}
    copies = []
    for context in (None, other_host):
        header, frames = host_share._dask_serialize(shared, context=context)
        assert header == {"ticket": False} and sum(memoryview(f).nbytes for f in frames[1:]) == sum(shared.layout.sizes)
        copies.append(host_share._dask_deserialize(header, frames))
    copies.append(pickle.loads(cloudpickle.dumps(shared)))  # in band, as the processes scheduler sends it
    with segment_dir() as shm:
        for copy in copies:
            got = host_share.unwrap(copy)
            assert got.weights.tolist() == table.weights.tolist() and got is not table
            assert not got.weights.flags.writeable and segment_of(got.weights) is not None
        assert len(files(shm)) == 1
        del copies, copy, got
        assert eventually_empty(shm) == []


# --- the benchmark


def test_the_host_memory_benchmark_runs_at_its_smallest(tmp_path):
    from dedupgraph.benchmarks import host_memory

    lines: list[str] = []
    rows, times = host_memory.run(2, 1, [], 4, 0.02, modes=("host",), rounds=1, progress=lines.append)
    assert [(r.mode, r.workers) for r in rows] == [("host", 1)] and len(lines) == 2
    assert rows[0].segments_left == 0 and rows[0].peak_mb > rows[0].idle_mb > 0
    assert [(t.mode, t.rounds) for t in times] == [("host", 1)] and times[0].persist_s > 0
    rows.append(dataclasses.replace(rows[0], workers=2))  # a second worker count: the plot
    report = host_memory.write(rows, times, 1, tmp_path)
    assert "| host |" in report.read_text() and "1 workers | 2 workers" in report.read_text()
    assert (tmp_path / "host_memory.csv").read_text().count("\n") == 3
    assert "| host |" in (tmp_path / "host_memory.md").read_text().split("Wall time")[1]
    assert (tmp_path / "host_memory_vs_workers.png").read_bytes()[:4] == b"\x89PNG"
