"""The once-per-process hint while the pass is off: local schedulers and in-process distributed schedulers."""

from __future__ import annotations

import logging
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed
from dask.callbacks import Callback
from distributed import Client, LocalCluster

import dedupgraph
from dedupgraph.once import Once
from dedupgraph.tools import hint

from payloads import Mapper, uses_mapper

CHUNKS = 60  # x 241 KB: about 14 MB of duplicated payload, over the default 10 MiB


@pytest.fixture
def fresh(monkeypatch, caplog):
    """A process that has given no hint yet, logging dedupgraph's INFO lines.

    Installed again: dask drops its global callbacks when computations run
    concurrently in threads (test_concurrency does), see dedupgraph.tools.hint.
    """
    monkeypatch.setattr(hint, "_given", Once())
    monkeypatch.setattr(Callback, "active", set(Callback.active))
    preloads = dask.config.get("distributed.scheduler.preload", [])
    hint.install()
    caplog.set_level(logging.INFO, logger="dedupgraph")
    yield caplog
    dask.config.set({"distributed.scheduler.preload": preloads})  # what install() added, for this test only


def test_importing_dedupgraph_installs_the_observers_once():
    code = (
        "import dask, distributed; from dask.callbacks import Callback; n = len(Callback.active); import dedupgraph;"
        "print(len(Callback.active) - n, dask.config.get('distributed.scheduler.preload'));"
        "from dedupgraph.tools import hint; hint.install(); hint.install();"
        "print(len(Callback.active) - n, dask.config.get('distributed.scheduler.preload'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the import: the local observer only; install(): the schedulers' preload too, once
    assert out.split() == ["1", "[]", "1", "['dedupgraph.tools.hint']"]


def hints(caplog):
    return [r for r in caplog.records if "dedupgraph is off" in r.getMessage()]


def seed_array(chunks=CHUNKS):
    return da.zeros((chunks, 10), chunks=(1, 10)).map_blocks(uses_mapper, Mapper(), meta=np.array(()))


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_local_schedulers_hint_once(fresh, scheduler):
    x = seed_array()
    assert x.sum().compute(scheduler=scheduler) == CHUNKS * 10 * 30_000
    x.sum().compute(scheduler=scheduler)
    [record] = hints(fresh)
    assert record.levelno == logging.INFO and record.name == "dedupgraph"
    message = record.getMessage()
    assert "dedupgraph.enable()" in message and f"(Mapper, in {CHUNKS} of" in message
    size = float(message.split("about ")[1].split(" MiB")[0])
    assert 13.0 < size < 14.5  # 59 extra copies of 241 KB, plus dask's own repeated partial


def test_no_hint_below_the_threshold_or_when_switched_off(fresh):
    seed_array(chunks=10).sum().compute(scheduler="sync")  # 2 MB
    with dask.config.set({"dedupgraph.hint-bytes": False}):
        seed_array().sum().compute(scheduler="sync")
    assert not hints(fresh)
    with dask.config.set({"dedupgraph.hint-bytes": "1 MiB"}):
        seed_array(chunks=10).sum().compute(scheduler="sync")
    assert len(hints(fresh)) == 1


def test_no_hint_while_the_pass_is_on(fresh):
    with dedupgraph.enable(dry_run=True):
        seed_array().sum().compute(scheduler="sync")
    with dask.config.set(delayed_optimize=dedupgraph.dedup_delayed):  # any collection's pass counts
        seed_array().sum().compute(scheduler="sync")
    assert not hints(fresh)


def test_objects_shared_by_identity_in_plain_delayed_tasks(fresh):
    m = Mapper()
    dask.compute(*[delayed(uses_mapper)(i, m) for i in range(60)], scheduler="sync")
    assert len(hints(fresh)) == 1


def test_invalid_setting_warns_once_and_computes(fresh):
    with dask.config.set({"dedupgraph.hint-bytes": "lots"}):
        assert seed_array(chunks=4).sum().compute(scheduler="sync") == 4 * 10 * 30_000
        seed_array(chunks=4).sum().compute(scheduler="sync")
    [warning] = [r for r in fresh.records if r.levelno >= logging.WARNING]
    assert "hint-bytes" in warning.getMessage()


def test_estimate_from_a_sample_of_a_large_graph():
    from dedupgraph.core.pipeline import task_graph

    x = da.zeros((10_000, 1), chunks=(1, 1)).map_blocks(uses_mapper, Mapper(), meta=np.array(()))
    graph = task_graph(dask.array.optimization.optimize(x.__dask_graph__(), x.__dask_keys__()))
    tasks = list(graph.values())
    sample = hint.spread_sample(tasks)
    assert len(sample) <= 2 * hint.SAMPLE_TASKS
    duplicated, label, carriers = hint.duplicated_payload(sample, len(tasks))
    exact = dedupgraph.inspect(x).rows[0]
    assert label == "Mapper" and abs(carriers - 10_000) <= 10
    assert abs(duplicated - exact.saved_bytes) / exact.saved_bytes < 0.02


def test_an_in_process_distributed_scheduler_hints(fresh):
    assert hint.PRELOAD in dask.config.get("distributed.scheduler.preload")
    # silence_logs=False: by default LocalCluster raises the log handlers' level to WARNING
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None, silence_logs=False) as cluster, Client(cluster) as client:
        assert "dedupgraph-hint" in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
        x = seed_array()
        assert client.compute(x.sum()).result() == CHUNKS * 10 * 30_000
        client.compute(x.sum()).result()
    [record] = hints(fresh)
    assert f"(Mapper, in {CHUNKS} of" in record.getMessage()


def test_nothing_at_warning_or_above_in_normal_operation(fresh):
    fresh.set_level(logging.DEBUG, logger="dedupgraph")
    x = seed_array()
    x.sum().compute(scheduler="sync")  # the hint
    with dedupgraph.enable():
        x.sum().compute(scheduler="threads")
        dask.compute(*[delayed(uses_mapper)(i, Mapper(30_020)) for i in range(3)])
    dedupgraph.inspect(x)
    assert not [r for r in fresh.records if r.levelno >= logging.WARNING]
    assert any(r.levelno == logging.DEBUG and "left" in r.getMessage() for r in fresh.records)
