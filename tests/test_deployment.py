"""The deployment recipe, for real: ``dask scheduler`` and ``dask worker`` processes, one variable everywhere.

``DASK_DEDUPGRAPH__ENABLED=True`` in the environment of the scheduler, the
workers and the client; the client scripts never import dedupgraph (the
startup hook does, in every process).  The scheduler's own settings would
hoist nothing (``min-bytes`` 1 GiB): what is hoisted comes from each
client's settings, which travel with its graphs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_preload import without_dedupgraph

BIN = Path(sys.executable).parent
N = 24  # partitions
SCHEDULER_MIN_BYTES = "1 GiB"


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return {**env, "DASK_DEDUPGRAPH__ENABLED": "True", **extra}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The scheduler file of ``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1``, as a shell starts them."""
    root = tmp_path_factory.mktemp("deployment")
    file = root / "scheduler.json"
    common = ["--no-dashboard", "--scheduler-file", str(file)]
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            env=_environment(DASK_DEDUPGRAPH__MIN_BYTES=SCHEDULER_MIN_BYTES), cwd=root,
            stdout=subprocess.DEVNULL, stderr=open(root / "scheduler.log", "w"),
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not (file.exists() and file.read_text().strip()):
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        procs.append(
            subprocess.Popen(
                [str(BIN / "dask"), "worker", "--nworkers", "2", "--nthreads", "1", "--memory-limit", "1GiB", *common],
                env=_environment(), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        yield file
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)


def run_client(script: str, file: Path, env: dict[str, str] | None = None, python: tuple[str, ...] = (sys.executable,)):
    done = subprocess.run(
        [*python, "-c", textwrap.dedent(script), str(file)],
        env=env or _environment(), cwd=file.parent, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


COMMON = """
    import json, os, sys, time
    import numpy as np, pandas as pd
    import dask, dask.dataframe as dd
    from distributed import Client, futures_of, get_worker

    N = %d
    SLEEP = float(os.environ.get("TASK_SLEEP", "0"))  # read here, captured with the function

    class Mapper:  # defined here: pickled by value, its type is __main__.Mapper everywhere
        def __init__(self, rows=30_000):
            self.s = pd.Series(range(rows))

    def with_len(part, m):
        # each distinct Mapper a worker holds is one deserialized copy of the payload
        try:
            get_worker().__dict__.setdefault("mappers", {})[id(m)] = m
            time.sleep(SLEEP)
        except ValueError:  # dask-expr calls it on an empty frame, here, for its output's meta
            pass
        return part.assign(y=part.x + len(m.s))

    def copies(dask_worker):
        return len(dask_worker.__dict__.pop("mappers", {}))

    def dedup_keys(dask_scheduler):
        return {str(k): len(ts.dependents) for k, ts in dask_scheduler.tasks.items() if str(k).startswith("dedup-")}

    def frame(start=0):
        return dd.from_pandas(pd.DataFrame({"x": np.arange(start, start + 4 * N)}), npartitions=N)

    def expected(start=0, rows=30_000):
        pdf = pd.DataFrame({"x": np.arange(start, start + 4 * N)})
        return pdf.assign(y=pdf.x + rows)

    def forgotten(client, timeout=30):
        # released futures reach the scheduler asynchronously: the next phase starts from none
        deadline = time.monotonic() + timeout
        while client.run_on_scheduler(dedup_keys) and time.monotonic() < deadline:
            time.sleep(0.05)

    def persisted(client, df):
        out = client.persist(df)
        client.gather(futures_of(out))
        return out

    def same(client, out, start=0, rows=30_000):
        return bool(client.compute(out).result().sort_index().equals(expected(start, rows)))
""" % N


MAIN = COMMON + """
    client = Client(scheduler_file=sys.argv[1])
    client.wait_for_workers(2, timeout=60)
    report = {}

    # the route: one copy per worker
    client.run(copies)
    out = persisted(client, frame().map_partitions(with_len, Mapper()))
    report["route"] = {"copies": sum(client.run(copies).values()), "keys": client.run_on_scheduler(dedup_keys), "same": same(client, out)}
    del out
    forgotten(client)

    # this client's settings: min-bytes 1 GiB hoists nothing here: plain dask, one copy per task
    with dask.config.set({"dedupgraph.min-bytes": "1 GiB"}):
        out = client.persist(frame(1000).map_partitions(with_len, Mapper(30_001)))
    client.gather(futures_of(out))  # the block has ended: the settings went with the graph
    report["plain"] = {"copies": sum(client.run(copies).values()), "keys": client.run_on_scheduler(dedup_keys)}
    del out
    forgotten(client)

    # exclude, from this client
    with dask.config.set({"dedupgraph.exclude": ["__main__.Mapper"]}):
        out = persisted(client, frame(2000).map_partitions(with_len, Mapper(30_002)))
    report["excluded"] = {"copies": sum(client.run(copies).values()), "keys": client.run_on_scheduler(dedup_keys)}
    del out
    forgotten(client)

    # two clients, equal objects (distinct ones, built apart), different partitions
    other = Client(scheduler_file=sys.argv[1])
    a = persisted(client, frame(3000).map_partitions(with_len, Mapper(30_003)))
    b = persisted(other, frame(4000).map_partitions(with_len, Mapper(30_003)))
    report["two clients"] = {
        "keys": {k: n for k, n in client.run_on_scheduler(dedup_keys).items()},
        "same": same(client, a, 3000, 30_003) and same(other, b, 4000, 30_003),
    }
    print(json.dumps(report))
"""


def test_the_client_scripts_never_import_dedupgraph():
    for script in (MAIN, REUSE, KILL, WITHOUT_DEDUPGRAPH):
        assert "import dedupgraph" not in script and "from dedupgraph" not in script


@pytest.fixture(scope="module")
def main_run(deployment):
    # each phase starts from no hoisted key: this client's settings keep nothing for reuse (tested below)
    return run_client(MAIN, deployment, env=_environment(DASK_DEDUPGRAPH__REUSE_LIMIT="0"))


def test_dataframe_payload_collapses_on_the_workers(main_run):
    route, plain = main_run["route"], main_run["plain"]
    assert route["same"]
    assert [n for n in route["keys"].values()] == [N]  # one hoisted key, every partition depends on it
    assert 1 <= route["copies"] <= 2  # one deserialized copy per worker process
    assert plain["copies"] == N and plain["keys"] == {}  # plain dask: one copy per partition


def test_the_clients_settings_govern_its_graphs(main_run):
    # the scheduler's own min-bytes (1 GiB) would have hoisted nothing above: the client's 64 KiB did;
    # and the client's 1 GiB ("plain") and its exclude held, whatever the scheduler had
    assert main_run["excluded"] == {"copies": N, "keys": {}}


def test_two_clients_with_equal_objects_share_one_hoisted_key(main_run):
    two = main_run["two clients"]
    assert two["same"]
    assert list(two["keys"].values()) == [2 * N]  # one key: both clients' partitions depend on it


REUSE = COMMON + """
    def hoisted_tasks(dask_scheduler):
        # the task state of each hoisted key: the same object means it was never released in between
        return {str(k): [id(ts), ts.state, len(ts.dependents)] for k, ts in dask_scheduler.tasks.items() if str(k).startswith("dedup-")}

    client = Client(scheduler_file=sys.argv[1])
    client.wait_for_workers(2, timeout=60)
    mapper = Mapper(30_006)
    client.run(copies)
    first = persisted(client, frame(5000).map_partitions(with_len, mapper))
    report = {"first": client.run_on_scheduler(hoisted_tasks), "same first": same(client, first, 5000, 30_006)}
    del first
    deadline = time.monotonic() + 60
    while any(n for _, _, n in client.run_on_scheduler(hoisted_tasks).values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the partitions released: the hoisted key has no dependent left
    report["between"] = client.run_on_scheduler(hoisted_tasks)
    second = persisted(client, frame(6000).map_partitions(with_len, mapper))
    report["second"] = client.run_on_scheduler(hoisted_tasks)
    report["same second"] = same(client, second, 6000, 30_006)
    report["copies"] = sum(client.run(copies).values())
    print(json.dumps(report))
"""


def test_a_later_computation_reuses_the_object_the_scheduler_kept(deployment):
    found = run_client(REUSE, deployment)
    assert found["same first"] and found["same second"]
    [(key, (ts_id, state, dependents))] = found["first"].items()
    assert dependents == N
    assert found["between"] == {key: [ts_id, "memory", 0]}  # kept in memory, with no computation using it
    assert found["second"] == {key: [ts_id, "memory", N]}  # the same task: not shipped nor unpickled again
    # each deserialization is a copy: at most one per worker for the first computation, and at most
    # one more for the second where distributed's memory manager dropped a copy in between
    assert found["copies"] <= 3


SPARED = COMMON + """
    import pickle

    client = Client(scheduler_file=sys.argv[1])
    client.wait_for_workers(2, timeout=60)
    sent = []
    send = client._send_to_scheduler

    def counted(msg):
        if msg.get("op") == "update-graph":
            sent.append(sum(memoryview(f).nbytes for f in msg["expr_ser"].frames))
        send(msg)

    client._send_to_scheduler = counted
    mapper = Mapper(2**18)  # 2 MiB pickled: a kept object the scheduler offers to leave out
    report = {"object": len(pickle.dumps(mapper, protocol=5)), "graphs": [], "same": []}
    for start in (7000, 8000, 9000):
        out = persisted(client, frame(start).map_partitions(with_len, mapper))
        report["graphs"].append(sent[-1])
        report["same"].append(same(client, out, start, 2**18))
        del out
        deadline = time.monotonic() + 60
        while not client._graph_to_futures.offer.kept and time.monotonic() < deadline:
            time.sleep(0.02)  # the scheduler says what it keeps, on the client's event loop
    print(json.dumps(report))
"""


def test_a_later_graph_leaves_out_the_object_the_scheduler_kept(deployment):
    found = run_client(SPARED, deployment)
    assert found["same"] == [True, True, True]
    first, *later = found["graphs"]
    assert first > found["object"]
    assert all(nbytes < 0.01 * found["object"] for nbytes in later), found


KILL = COMMON + """
    client = Client(scheduler_file=sys.argv[1])
    client.wait_for_workers(2, timeout=60)
    out = client.persist(frame(5000).map_partitions(with_len, Mapper(30_005)))
    time.sleep(1.0)  # a few tasks done, most still to run
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    done = sum(f.status == "finished" for f in futures_of(out))
    os.kill(pids[victim], 9)
    client.gather(futures_of(out))
    report = {"same": same(client, out, 5000, 30_005), "keys": client.run_on_scheduler(dedup_keys)}
    print(json.dumps({**report, "done before the kill": done}))
"""


def test_a_worker_killed_mid_computation(deployment):
    found = run_client(KILL, deployment, env=_environment(TASK_SLEEP="0.2"))
    assert found["done before the kill"] < N  # mid-computation
    assert found["same"]
    assert len(found["keys"]) == 1


def test_info_says_the_scheduler_runs_the_route(deployment):
    address = json.loads(deployment.read_text())["address"]
    done = subprocess.run(
        [str(BIN / "dedupgraph"), "info", "--scheduler", address],
        env=_environment(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scheduler {address}: dedupgraph " in done.stdout
    assert "scheduler route: on" in done.stdout and "min-bytes=1073741824" in done.stdout


WITHOUT_DEDUPGRAPH = COMMON + """
    assert "dedupgraph" not in sys.modules
    client = Client(scheduler_file=sys.argv[1])
    out = persisted(client, frame(6000).map_partitions(with_len, Mapper(30_006)))
    print(json.dumps({"same": same(client, out, 6000, 30_006), "keys": client.run_on_scheduler(dedup_keys)}))
"""


def test_a_client_without_dedupgraph_gets_the_schedulers_settings(deployment, tmp_path):
    # python -S, a site-packages without dedupgraph: nothing travels with the graph
    env = without_dedupgraph(tmp_path)
    found = run_client(WITHOUT_DEDUPGRAPH, deployment, env=env, python=(sys.executable, "-S"))
    assert found == {"same": True, "keys": {}}  # the scheduler's 1 GiB: nothing hoisted


def test_the_scheduler_log_shows_the_route(deployment, main_run):
    # dask scheduler logs dedupgraph's INFO lines with its own, unasked
    log = (deployment.parent / "scheduler.log").read_text()
    assert "dedupgraph: scheduler route on" in log
    assert "hoisted 1 object (" in log and f"shared by {N} tasks" in log
