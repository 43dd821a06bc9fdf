"""A scheduler keeps hoisted objects for later computations: reused by content, bounded, never stale."""

from __future__ import annotations

import asyncio
import os
import re
import time

import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed
from dask.utils import format_bytes
from distributed import Client, LocalCluster

import dedupgraph
from dedupgraph.routes.distributed.plugin import kept_for_reuse
from dedupgraph.routes.distributed.reuse import KEEPER

from payloads import HoistedRuns, Mapper, uses_mapper

DEADLINE = 120  # seconds: generous, for a loaded machine


def _poll(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        time.sleep(0.05)


def _kept_keys(cluster) -> list[str]:
    kept = kept_for_reuse(cluster.scheduler)
    assert kept is not None, "the scheduler route is off"
    return cluster.sync(_kept_now, cluster.scheduler)


async def _kept_now(scheduler) -> list[str]:
    # on the event loop, where the plugin keeps its books
    kept = kept_for_reuse(scheduler)
    kept.drop_missing(scheduler.tasks.__contains__)
    return [str(entry.key) for entry in kept.entries()]


def _wanted_by_keeper(cluster, key: str) -> bool:
    ts = cluster.scheduler.tasks.get(key)
    return ts is not None and any(cs.client_key == KEEPER for cs in ts.who_wants or ())


def _array(mapper: Mapper, n: int = 40):
    return da.arange(n, chunks=2).map_blocks(uses_mapper, mapper)


@pytest.fixture(scope="module")
def cluster():
    with dedupgraph.enable():  # a LocalCluster started after enable() runs the scheduler route
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            yield cluster


@pytest.fixture
def runs(cluster):
    plugin = HoistedRuns()
    cluster.scheduler.add_plugin(plugin, name=f"hoisted-runs-{id(plugin)}")
    yield plugin
    cluster.scheduler.remove_plugin(f"hoisted-runs-{id(plugin)}")
    with Client(cluster, set_as_default=False) as client:
        dedupgraph.forget(client)


def test_a_later_computation_reuses_the_kept_object_without_shipping_it_again(cluster, runs):
    mapper = Mapper()
    expected = np.arange(40) + len(mapper.s)
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        first = client.compute(_array(mapper)).result()
        (key,) = runs.runs
        assert _kept_keys(cluster) == [key]
        again = client.compute(_array(mapper)).result()
        # another collection type, another graph: the same content, the same key
        values = client.compute([delayed(uses_mapper)(i, mapper) for i in range(5)])
        assert client.gather(values) == [uses_mapper(i, mapper) for i in range(5)]
        assert runs.runs == {key: 1}  # produced once, for three computations
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)


def test_an_object_changed_in_place_is_shipped_again_and_gives_plain_dasks_result(cluster, runs):
    mapper = Mapper()
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        before = client.compute(da.arange(40, chunks=2).map_blocks(mapper.method)).result()
        mapper.s.iloc[-1] = 10**6  # in place, between two computations
        after = client.compute(da.arange(40, chunks=2).map_blocks(mapper.method)).result()
        assert len(_kept_keys(cluster)) == 2  # the stale content stays kept, unused, until it is pushed out
    with dask.config.set(scheduler="sync"):
        plain = da.arange(40, chunks=2).map_blocks(mapper.method).compute(optimize_graph=False)
    np.testing.assert_array_equal(after, plain)
    assert not np.array_equal(before, after)
    assert sorted(runs.runs.values()) == [1, 1]  # two contents, two keys, each produced once


def test_what_is_kept_for_a_client_goes_when_it_closes(cluster, runs):
    mapper = Mapper(rows=31_000)
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        client.compute(_array(mapper)).result()
        (key,) = runs.runs
        assert _wanted_by_keeper(cluster, key)
    _poll(lambda: key not in cluster.scheduler.tasks, "the closed client's kept key released")
    assert key not in _kept_keys(cluster)


def test_a_key_kept_for_two_clients_stays_until_both_close(cluster, runs):
    mapper = Mapper(rows=32_000)
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as one:
        with Client(cluster, set_as_default=False) as two:
            two.compute(_array(mapper)).result()
            (key,) = runs.runs
            one.compute(_array(mapper)).result()  # reused, and now kept for both
        _poll(lambda: cluster.scheduler.clients.get(two.id) is None, "the second client gone")
        assert _wanted_by_keeper(cluster, key) and runs.runs == {key: 1}
        one.compute(_array(mapper)).result()
        assert runs.runs == {key: 1}
    _poll(lambda: key not in cluster.scheduler.tasks, "the key released once both clients closed")


def test_beyond_the_limit_the_least_recently_used_goes(cluster, runs):
    mappers = [Mapper(rows=30_000 + i) for i in range(5)]  # ~241 KB pickled each: four fit in 1 MiB
    with dedupgraph.enable(reuse_limit="1 MiB"), Client(cluster, set_as_default=False) as client:
        keys = []
        for mapper in mappers[:4]:
            client.compute(_array(mapper)).result()
            keys.append(next(k for k in runs.runs if k not in keys))
        assert _kept_keys(cluster) == keys
        client.compute(_array(mappers[0])).result()  # used again: now the most recent
        client.compute(_array(mappers[4])).result()
        newest = next(k for k in runs.runs if k not in keys)
        assert _kept_keys(cluster) == [keys[2], keys[3], keys[0], newest]  # keys[1] was the least recent
        _poll(lambda: keys[1] not in cluster.scheduler.tasks, "the least recently used key released")
        kept = kept_for_reuse(cluster.scheduler)
        assert kept.total_bytes <= 2**20


def test_forget_lets_go_of_everything_kept(cluster, runs):
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        for rows in (33_000, 34_000):
            client.compute(_array(Mapper(rows=rows))).result()
        keys = list(runs.runs)
        assert sorted(_kept_keys(cluster)) == sorted(keys)
        dropped = dedupgraph.forget(client)
        assert dropped["objects"] == 2 and dropped["bytes"] > 2 * 200_000
        assert _kept_keys(cluster) == []
        _poll(lambda: not any(k in cluster.scheduler.tasks for k in keys), "the forgotten keys released")
        assert dedupgraph.forget(client) == {"objects": 0, "bytes": 0}


def test_small_hoisted_objects_are_not_kept(cluster, runs):
    small = np.arange(2_500)  # hoisted (20 KB, in 20 tasks), below KEEP_MIN_BYTES
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        assert client.compute(da.arange(40, chunks=2).map_blocks(_add_len, small)).result().tolist() == [
            i + len(small) for i in range(40)
        ]
        assert runs.runs and _kept_keys(cluster) == []


def _add_len(block, table):
    return block + len(table)


def test_reuse_limit_zero_keeps_nothing(cluster, runs):
    with dedupgraph.enable(reuse_limit=0), Client(cluster, set_as_default=False) as client:
        client.compute(_array(Mapper(rows=35_000))).result()
        (key,) = runs.runs
        assert _kept_keys(cluster) == []
        _poll(lambda: key not in cluster.scheduler.tasks, "the hoisted key released after the computation")


def test_client_map_and_submit_reuse_kept_objects_too(cluster, runs):
    mapper = Mapper(rows=36_000)
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        assert client.gather(client.map(uses_mapper, range(6), mapper=mapper)) == [uses_mapper(i, mapper) for i in range(6)]
        assert client.submit(uses_mapper, 7, mapper).result() == uses_mapper(7, mapper)
        assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
    assert list(runs.runs.values()) == [1]


def test_objects_shared_per_host_are_kept_and_reused_too(cluster, runs):
    mapper = Mapper(rows=200_000)  # its values buffer (1.6 MB) goes to shared memory
    with dedupgraph.enable(share="host"), Client(cluster, set_as_default=False) as client:
        for _ in range(2):
            assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
        (key,) = runs.runs
        assert key.startswith("dedup-host-Mapper-") and runs.runs == {key: 1}
        assert _kept_keys(cluster) == [key]


def test_what_is_kept_shows_in_metrics_the_page_and_status(cluster, runs):
    import urllib.request

    from dedupgraph.tools.cli import format_status
    from dedupgraph.tools.observe import on_scheduler

    def get(path: str) -> str:
        port = cluster.scheduler.http_server.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.read().decode()

    mapper = Mapper(rows=37_000)
    with dedupgraph.enable(), Client(cluster, set_as_default=False) as client:
        client.compute(_array(mapper)).result()
        (key,) = runs.runs
        nbytes = kept_for_reuse(cluster.scheduler).entries()[0].nbytes
        metrics = get("/metrics")
        assert re.search(r"^dedupgraph_kept_objects 1\.0$", metrics, flags=re.M), metrics
        assert re.search(rf"^dedupgraph_kept_bytes {nbytes}\.0$", metrics, flags=re.M)
        assert f"Kept for later computations (reuse-limit): 1, {format_bytes(nbytes)}." in get("/dedupgraph")
        text = format_status("here", client.run_on_scheduler(on_scheduler))
        assert f"kept for later computations: 1, {format_bytes(nbytes)}" in text
        dedupgraph.forget(client)
        assert "dedupgraph_kept_objects 0.0" in get("/metrics")
        assert "kept for later computations: none" in format_status("here", client.run_on_scheduler(on_scheduler))


def test_forget_without_a_client_says_what_it_needs():
    with pytest.raises(ValueError, match="needs a distributed Client"):
        dedupgraph.forget()


def test_a_kept_object_lost_with_its_worker_is_recomputed_and_reuse_never_crosses_schedulers():
    mapper = Mapper()
    expected = [uses_mapper(i, mapper) for i in range(40)]
    with dedupgraph.enable():
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as one, Client(one) as client:
            client.compute(_array(mapper)).result()
            (key,) = _kept_keys(one)
            holders = [ws.address for ws in one.scheduler.tasks[key].who_has]
            client.run(os._exit, 1, workers=holders, on_error="ignore")  # the worker process dies; its nanny starts a new one
            _poll(lambda: all(h not in one.scheduler.workers for h in holders), "the holding worker gone")
            assert client.compute(_array(mapper)).result().tolist() == expected
            with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as two, Client(two) as other:
                runs = HoistedRuns()
                two.scheduler.add_plugin(runs)
                assert other.compute(_array(mapper)).result().tolist() == expected
                assert runs.runs == {key: 1}  # the other scheduler ran it itself


def test_kept_objects_keep_their_copies_between_computations_other_keys_do_not(cluster, runs):
    # distributed's Active Memory Manager drops every copy but one of a key no task waits for;
    # a kept object keeps its copy on each worker that used it, so no later computation copies it again
    mapper = Mapper(30_011)
    expected = [uses_mapper(i, mapper) for i in range(40)]
    a, b = sorted(cluster.scheduler.workers)
    with Client(cluster) as client:
        assert client.compute(_array(mapper), workers=[a]).result().tolist() == expected
        (key,) = _kept_keys(cluster)
        assert client.compute(_array(mapper), workers=[b]).result().tolist() == expected  # needs it on b too
        _poll(lambda: _holders(cluster, key) == {a, b}, "a copy on each worker that used it")
        other = client.scatter(np.arange(100_000), broadcast=True)
        _poll(lambda: _holders(cluster, other.key) == {a, b}, "the scattered array on both workers")
        client.amm.run_once()
        _poll(lambda: len(_holders(cluster, other.key)) == 1, "ReduceReplicas dropping the surplus scattered copy")
        assert _holders(cluster, key) == {a, b}  # the same run left the kept object's copies alone
        assert client.compute(_array(mapper)).result().tolist() == expected
        assert runs.runs == {key: 1}
        dedupgraph.forget(client)
        _poll(lambda: key not in cluster.scheduler.tasks, "the kept object let go of")


def _holders(cluster, key) -> set[str]:
    ts = cluster.scheduler.tasks.get(key)
    return {ws.address for ws in ts.who_has or ()} if ts is not None else set()


def test_the_route_wraps_reduce_replicas_and_gives_it_back_when_it_goes():
    from distributed import Scheduler
    from distributed.active_memory_manager import ReduceReplicas

    from dedupgraph.routes.activation import SCHEDULER_PRELOAD
    from dedupgraph.routes.distributed.plugin import uninstall
    from dedupgraph.routes.distributed.replicas import KeptCopiesStay

    async def policies_with_and_without_the_route():
        async with Scheduler(dashboard_address=":0", preload=[SCHEDULER_PRELOAD]) as scheduler:
            policies = scheduler.extensions["amm"].policies
            with_route = sorted(type(p).__name__ for p in policies)
            (wrapper,) = [p for p in policies if isinstance(p, KeptCopiesStay)]
            uninstall(scheduler)
            return with_route, wrapper.policy in policies and isinstance(wrapper.policy, ReduceReplicas), wrapper in policies

    assert asyncio.run(policies_with_and_without_the_route()) == (["KeptCopiesStay"], True, False)
