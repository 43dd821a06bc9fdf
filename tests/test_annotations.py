"""Annotations: every rewritten task keeps exactly what plain dask gives it, on a real cluster."""

from __future__ import annotations

import time
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask import delayed
from distributed import Client, LocalCluster, Nanny, Scheduler, SchedulerPlugin, SpecCluster, get_worker, wait

import dedupgraph

from payloads import Mapper, uses_mapper

ANNOTATIONS = {
    "retries": 2,
    "priority": 5,
    "resources": {"GPU": 1},
    "workers": ["tcp://127.0.0.1:1"],  # with allow_other_workers: a preference, not a restriction
    "allow_other_workers": True,
    "team": "ours",  # a custom key, for scheduler plugins
}


def by_key_length(key):
    """A callable annotation: dask calls it with each key."""
    return len(str(key))


@pytest.fixture(scope="module")
def cluster():
    # the workers have the GPU resource, so that tasks asking for it can run
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, resources={"GPU": 2}
    ) as c:
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        yield c


class AnnotationRecorder(SchedulerPlugin):
    """Records each task's annotations as it enters the scheduler (hoisted keys leave it early)."""

    name = "annotation-recorder"

    def __init__(self) -> None:
        self.seen: dict[str, dict] = {}

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if start == "released" and finish == "waiting" and key in self.scheduler.tasks:
            self.seen[str(key)] = dict(self.scheduler.tasks[key].annotations)


def _taken(dask_scheduler):
    plugin = dask_scheduler.plugins[AnnotationRecorder.name]
    seen, plugin.seen = plugin.seen, {}
    return seen


def _submitted(client, colls):
    """Annotations the scheduler gives each task of ``colls``, hoisted keys apart."""
    client.register_plugin(AnnotationRecorder())  # replaces the previous one: nothing recorded yet
    wait(client.compute(colls))
    # dask names the finalize task of each compute call afresh
    tasks = {("finalize" if k.startswith("finalize-") else k): v for k, v in client.run_on_scheduler(_taken).items()}
    hoisted = {k: v for k, v in tasks.items() if k.startswith("dedup-")}
    return {k: v for k, v in tasks.items() if k not in hoisted}, hoisted


def _compare(client, build, **config):
    """Plain and deduplicated annotations of the same collections, and the hoisted keys' own."""
    m = Mapper()
    with dask.config.set(config):
        colls = build(m)
        plain, none = _submitted(client, colls)
        with dedupgraph.enable():
            ours, hoisted = _submitted(client, colls)
    assert none == {}
    return plain, ours, hoisted


def _delayed(m):
    with dask.annotate(**ANNOTATIONS, custom=by_key_length):
        return [delayed(uses_mapper)(i, m) for i in range(4)]


def _array(m):
    with dask.annotate(**ANNOTATIONS):
        x = da.arange(8, chunks=2).map_blocks(uses_mapper, m)
    return x + 1


def _bag(m):
    with dask.annotate(retries=2, priority=3):
        return db.from_sequence(range(8), npartitions=4).map(uses_mapper, m)


@pytest.mark.parametrize(
    "build, config",
    [
        (_delayed, {}),
        (_array, {"optimization.fuse.active": False}),  # blockwise-fused, layers kept
        (_array, {}),  # low-level fused as well
        (_bag, {}),
    ],
    # (dask 2026.8's "optimization.fuse.delayed" fails on any dask.compute: keys arrive as lists)
    ids=["delayed", "array-blockwise", "array-fused", "bag"],
)
def test_annotations_are_those_of_plain_dask(client, build, config):
    plain, ours, hoisted = _compare(client, build, **config)
    assert ours == plain
    assert hoisted and all(v == {} for v in hoisted.values())  # data: any worker may hold it


def test_every_kind_reaches_the_scheduler(client):
    plain, ours, _ = _compare(client, _delayed)
    expected = {**ANNOTATIONS, "resources": {"GPU": 1}}
    for key, annotations in ours.items():
        assert annotations == {**expected, "custom": len(key)}
    assert ours == plain


def flaky(i, m, directory):
    """Fails on its first two calls for each ``i``: succeeds only when retried twice."""
    marker = Path(directory) / f"call-{i}"
    calls = len(marker.read_text()) if marker.exists() else 0
    marker.write_text("x" * (calls + 1))
    if calls < 2:
        raise OSError(f"flaky I/O, call {calls + 1}")
    return uses_mapper(i, m)


@pytest.mark.parametrize("config", [{"optimization.fuse.active": False}, {}])
def test_retries_still_retry_a_flaky_task(client, tmp_path, config):
    m = Mapper()
    with dask.config.set(config):
        with dedupgraph.enable():
            with dask.annotate(retries=2):
                parts = [delayed(flaky)(i, m, str(tmp_path)) for i in range(3)]
            assert client.gather(client.compute(parts)) == [uses_mapper(i, m) for i in range(3)]
            # without retries the same tasks fail: the annotation is what made them succeed
            other = tmp_path / "other"
            other.mkdir()
            with pytest.raises(OSError, match="flaky"):
                client.gather(client.compute([delayed(flaky)(i, m, str(other)) for i in range(3)]))


def where(i, m):
    time.sleep(0.2)  # long enough that, unrestricted, both workers would run some
    return get_worker().address


def test_resources_restrict_where_tasks_run():
    workers = {
        "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": Nanny, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    m = Mapper()
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        gpu = [w for w, info in client.scheduler_info()["workers"].items() if info["resources"]]
        with dedupgraph.enable():
            with dask.annotate(resources={"GPU": 1}):
                parts = [delayed(where)(i, m) for i in range(6)]
            client.register_plugin(AnnotationRecorder())
            ran_on = client.gather(client.compute(parts))
            assert any(k.startswith("dedup-") for k in client.run_on_scheduler(_taken))
    assert set(ran_on) == set(gpu) and len(gpu) == 1


def test_deduplicate_keeps_annotations(client):
    m = Mapper()
    with dask.annotate(**ANNOTATIONS, custom=by_key_length):
        parts = [delayed(uses_mapper)(i, m) for i in range(4)]
    with dask.config.set({"optimization.fuse.active": False}):
        with dask.annotate(retries=3):
            arr = da.arange(8, chunks=2).map_blocks(uses_mapper, m) + 1
        plain, _ = _submitted(client, [*parts, arr])
        for scatter in (False, client):
            deduped = dedupgraph.deduplicate(parts, arr, client=scatter)
            ours, hoisted = _submitted(client, [*deduped[0], deduped[1]])
            assert ours == plain
            # hoisted into a graph key, or scattered: already in memory, no task enters
            assert bool(hoisted) is (scatter is False)
            assert any(str(k).startswith("dedup-") for d in deduped[0] for k in dict(d.__dask_graph__()))
    assert np.array_equal(client.compute(deduped[1]).result(), (np.arange(8) + len(m.s) + 1))


def test_a_pass_on_a_plain_dict_graph_returns_a_dict():
    """Where dask's own optimizer returns a dict (layers already merged), so does the pass."""
    m = Mapper()
    parts = db.from_sequence(range(8), npartitions=4).map(uses_mapper, m)
    graph = dedupgraph.dedup_bag(parts.__dask_graph__(), parts.__dask_keys__())
    assert type(graph) is dict and any(str(k).startswith("dedup-") for k in graph)

