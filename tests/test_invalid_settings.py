"""A setting made invalid after the pass is on never fails a computation: one warning, plain dask.

``dask.config.set({"dedupgraph.min-count": 0})`` after ``enable()`` (or with
the environment route) is only read when a graph is optimized, pickled or
sent.  Every route then warns once per setting and process, and the graph
runs as plain dask makes it: no hoisted key anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from distributed import Client, LocalCluster

import dedupgraph

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper

BIN = Path(sys.executable).parent
INVALID = {"dedupgraph.min-count": 0}


def reports(caught: list[warnings.WarningMessage], records: list[logging.LogRecord]) -> list[str]:
    """Every warning and WARNING log line that names the invalid setting."""
    shown = [str(w.message) for w in caught if "min-count" in str(w.message)]
    logged = [r.getMessage() for r in records if r.levelno >= logging.WARNING and "min-count" in r.getMessage()]
    return shown + logged


def with_len(part, m):
    return part.assign(y=part.x + len(m.s))


def test_local_schedulers_warn_once_and_compute_as_plain_dask(caplog):
    m = Mapper()
    arr = da.arange(12, chunks=3).map_blocks(uses_mapper, m)
    parts = [delayed(uses_mapper)(i, m) for i in range(4)]
    bag = db.from_sequence(range(6), npartitions=3).map(uses_mapper, m)
    with dedupgraph.enable(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask.config.set(INVALID):
            assert hoisted_keys(optimized_graph(arr, *parts)) == []
            np.testing.assert_array_equal(arr.compute(scheduler="threads"), np.arange(12) + len(m.s))
            assert dask.compute(*parts, scheduler="sync") == tuple(i + len(m.s) for i in range(4))
            assert bag.compute(scheduler="processes") == [i + len(m.s) for i in range(6)]
        # fixed: the pass is back
        assert len(hoisted_keys(optimized_graph(arr))) == 1
    [report] = reports(caught, caplog.records)
    assert "dedupgraph setting 'min-count' must be >= 1, got 0" in report and "plain dask" in report


def test_a_cluster_started_after_enable_warns_once_and_runs_plain_dask(caplog):
    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    m = Mapper(30_001)
    pdf = pd.DataFrame({"x": np.arange(16)})
    frame = dd.from_pandas(pdf, npartitions=8).map_partitions(with_len, m)
    arr = da.arange(12, chunks=3).map_blocks(uses_mapper, m)
    parts = [delayed(uses_mapper)(i, m) for i in range(4)]
    with dedupgraph.enable(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
            assert "dedupgraph-route" in cluster.scheduler.plugins  # the scheduler route, in this process
            with dask.config.set(INVALID):
                pd.testing.assert_frame_equal(client.compute(frame).result(), pdf.assign(y=pdf.x + len(m.s)))
                np.testing.assert_array_equal(client.compute(arr).result(), np.arange(12) + len(m.s))
                assert client.gather(client.compute(parts)) == [i + len(m.s) for i in range(4)]
                held = client.persist(parts)
                client.gather(held)
                on_scheduler = [str(k) for k in cluster.scheduler.tasks if str(k).startswith("dedup-")]
                del held
    assert on_scheduler == []
    [report] = reports(caught, caplog.records)
    assert "'min-count' must be >= 1, got 0" in report


def test_the_environment_route_with_a_remote_scheduler_warns_once_and_runs_plain_dask(tmp_path):
    """Scheduler and worker processes whose own settings hoist; the client's settings become invalid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_DEDUPGRAPH__ENABLED"] = "True"
    file = tmp_path / "scheduler.json"
    common = ["--no-dashboard", "--scheduler-file", str(file)]
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 120
        while not (file.exists() and file.read_text().strip()):
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        procs.append(
            subprocess.Popen(
                [str(BIN / "dask"), "worker", "--nworkers", "1", "--nthreads", "1", *common],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        script = """
            import json, sys, time
            import numpy as np, pandas as pd
            import dask, dask.dataframe as dd
            from distributed import Client, futures_of

            class Mapper:
                def __init__(self):
                    self.s = pd.Series(range(30_000))

            def with_len(part, m):
                return part.assign(y=part.x + len(m.s))

            def dedup_keys(dask_scheduler):
                return sorted(str(k).rsplit("-", 1)[0] for k in dask_scheduler.tasks if str(k).startswith("dedup-"))

            out = {}
            pdf = pd.DataFrame({"x": np.arange(16)})
            with Client(scheduler_file=sys.argv[1], timeout=60) as client:
                client.wait_for_workers(1, timeout=60)
                frame = dd.from_pandas(pdf, npartitions=8).map_partitions(with_len, Mapper())
                with dask.config.set({"dedupgraph.reuse-limit": 0}):  # kept, its key would stay below
                    held = client.persist(frame)
                client.gather(futures_of(held))
                out["valid"] = client.run_on_scheduler(dedup_keys)  # the route hoists, as a check
                del held
                # the release is asynchronous: wait until the scheduler has forgotten the first hoisted key
                deadline = time.monotonic() + 60
                while client.run_on_scheduler(dedup_keys):
                    assert time.monotonic() < deadline, "the first computation's keys were not released"
                    time.sleep(0.05)
                with dask.config.set({"dedupgraph.min-count": 0}):
                    parts = [dask.delayed(with_len)(pdf, m) for m in [Mapper()] for _ in range(4)]
                    frame = dd.from_pandas(pdf, npartitions=8).map_partitions(with_len, Mapper())
                    # apart: distributed 2025.5.0 cannot persist a DataFrame and delayed values in one call, even plainly
                    held = [client.persist(frame), *client.persist(parts)]
                    client.gather(futures_of(held))
                    out["invalid"] = client.run_on_scheduler(dedup_keys)
                    out["right"] = held[0].compute().equals(pdf.assign(y=pdf.x + 30_000))
                    with Client(scheduler_file=sys.argv[1], timeout=60, set_as_default=False) as another:
                        out["another"] = another.submit(sum, [1, 2]).result()
            print(json.dumps(out))
        """
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), str(file)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["valid"] == ["dedup-Mapper"]
    assert out == {"valid": ["dedup-Mapper"], "invalid": [], "right": True, "another": 3}
    assert done.stderr.count("'min-count' must be >= 1, got 0") == 1, done.stderr[-4000:]
