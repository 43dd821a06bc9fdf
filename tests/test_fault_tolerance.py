"""Real LocalClusters: worker processes killed mid-computation, reuse across persists, threads.

What happens when a worker dies, per mode (see also the README):

- config route (``enable()``): the hoisted key is a graph key with a run_spec,
  recomputed like any task: results complete and correct, even when the only
  worker holding it dies;
- ``deduplicate(..., broadcast=True)``: a copy on every worker (while tasks
  wait for it): losing one worker loses nothing;
- ``deduplicate(..., broadcast=False)``: one copy, plus those that workers
  fetched for their tasks; when the last copy dies, the computation fails with
  ``ScatteredObjectLost``, which names the key and the fix.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
from dask import delayed
from distributed import Client, LocalCluster, wait

import dedupgraph
from dedupgraph.placement.scatter import ScatteredObjectLost

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper

TASKS = 24
TASK_SECONDS = 0.1


def slow_uses_mapper(i, mapper):
    time.sleep(TASK_SECONDS)
    return uses_mapper(i, mapper)


@pytest.fixture(scope="module")
def two():
    """Two single-threaded worker processes, restarted by their nannies when killed."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


@pytest.fixture(scope="module")
def one():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


def _ready(client, n):
    """Wait until exactly ``n`` workers answer (a killed one has been replaced)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            pids = client.run(os.getpid, on_error="raise")
            if len(pids) == n:
                return pids
        except Exception:  # a dead worker still registered
            pass
        assert time.monotonic() < deadline, "workers did not come back"
        time.sleep(0.1)


def _kill_when_some_done(client, futures, victims, done=4):
    """SIGKILL the worker processes at ``victims`` once ``done`` results exist."""
    deadline = time.monotonic() + 60
    while sum(f.done() for f in futures) < done:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not all(f.done() for f in futures), "killed too late to be in the middle"
    pids = client.run(os.getpid)
    for address in victims:
        os.kill(pids[address], signal.SIGKILL)


def _holders(client, key):
    return list(client.sync(client.scheduler.who_has, keys=[key]).get(key, ()))


def _expected(mapper):
    return [uses_mapper(i, mapper) for i in range(TASKS)]


def _computed_with_the_pass(client, rows):
    """(the hoisted key, futures of TASKS slow tasks that all carry one Mapper(rows))."""
    tasks = [delayed(slow_uses_mapper)(i, m) for m in [Mapper(rows)] for i in range(TASKS)]
    with dedupgraph.enable():
        key = hoisted_keys(optimized_graph(tasks))[0]
        return key, client.compute(tasks)


def test_config_route_survives_losing_a_worker_mid_computation(two):
    _ready(two, 2)
    mapper = Mapper(30_100)
    key, futures = _computed_with_the_pass(two, 30_100)
    while not _holders(two, key):
        time.sleep(0.01)
    _kill_when_some_done(two, futures, victims=_holders(two, key)[:1])
    assert two.gather(futures) == _expected(mapper)


def test_config_route_recomputes_the_hoisted_key_when_its_only_worker_dies(one):
    _ready(one, 1)
    mapper = Mapper(30_101)
    key, futures = _computed_with_the_pass(one, 30_101)
    _kill_when_some_done(one, futures, victims=list(_ready(one, 1)))
    assert one.gather(futures) == _expected(mapper)
    # computed twice from its run_spec: before and after the worker died
    story = one.run_on_scheduler(_memory_transitions, key)
    assert story >= 2, story


def _memory_transitions(key, dask_scheduler):
    return sum(1 for t in dask_scheduler.story(key) if t[0] == key and t[2] == "memory")


def test_broadcast_survives_losing_a_worker_mid_computation(two):
    _ready(two, 2)
    mapper = Mapper(30_102)
    (tasks,) = dedupgraph.deduplicate(
        [delayed(slow_uses_mapper)(i, m) for m in [Mapper(30_102)] for i in range(TASKS)], client=two, broadcast=True
    )
    futures = two.compute(tasks)
    _kill_when_some_done(two, futures, victims=[next(iter(_ready(two, 2)))])
    assert two.gather(futures) == _expected(mapper)


def test_scattered_object_lost_with_its_only_worker_fails_clearly(two):
    _ready(two, 2)
    (tasks,) = dedupgraph.deduplicate(
        [delayed(slow_uses_mapper)(i, m) for m in [Mapper(30_103)] for i in range(TASKS)], client=two, broadcast=False
    )
    key = hoisted_keys(optimized_graph(tasks))[0]
    [holder] = _holders(two, key)
    os.kill(two.run(os.getpid)[holder], signal.SIGKILL)
    with pytest.raises(ScatteredObjectLost, match=f"{key}.*only worker that held it.*client=False"):
        two.gather(two.compute(tasks))


def test_broadcast_object_lost_with_every_worker_mid_computation_fails_clearly(one):
    _ready(one, 1)
    (tasks,) = dedupgraph.deduplicate(
        [delayed(slow_uses_mapper)(i, m) for m in [Mapper(30_104)] for i in range(TASKS)], client=one, broadcast=True
    )
    futures = one.compute(tasks)
    _kill_when_some_done(one, futures, victims=list(_ready(one, 1)))
    with pytest.raises(ScatteredObjectLost, match="every worker that held a copy"):
        one.gather(futures)
    # the fix the message gives: deduplicate the original collections again
    _ready(one, 1)
    (again,) = dedupgraph.deduplicate(
        [delayed(slow_uses_mapper)(i, m) for m in [Mapper(30_104)] for i in range(TASKS)], client=one
    )
    assert one.gather(one.compute(again)) == _expected(Mapper(30_104))


class GraphBytes:
    """Bytes of the graphs a client sends with ``update-graph``, and the objects it scatters."""

    def __init__(self, client):
        self.graphs: list[int] = []
        self.scattered = 0
        send, scatter = client._send_to_scheduler, client.scatter

        def sending(msg):
            if msg.get("op") == "update-graph":
                ser = msg["expr_ser"]
                self.graphs.append(sum(len(f) for f in ser.frames))
            return send(msg)

        def scattering(data, *args, **kwargs):
            self.scattered += len(data)
            return scatter(data, *args, **kwargs)

        self.patches = [
            mock.patch.object(client, "_send_to_scheduler", sending),
            mock.patch.object(client, "scatter", scattering),
        ]

    def __enter__(self):
        for p in self.patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.patches:
            p.stop()


def _worker_copies(key, dask_worker):
    return id(dask_worker.data[key]) if key in dask_worker.data else None


def test_two_persists_send_the_object_once_config_route(two):
    """The hoisted key is computed once while some task still needs it, and again after.

    Not wanted by the client itself, the key is released once its last
    dependent is done: a persist submitted after that sends it again (in its
    graph, as every config-route graph does, and to a worker).
    """
    _ready(two, 2)
    first = [delayed(slow_uses_mapper)(i, m) for m in [Mapper(30_105)] for i in range(TASKS)]
    second = [delayed(slow_uses_mapper)(i + 100, m) for m in [Mapper(30_105)] for i in range(TASKS)]
    later = [delayed(slow_uses_mapper)(i + 200, m) for m in [Mapper(30_105)] for i in range(4)]
    with dedupgraph.enable(), GraphBytes(two) as sent:
        key = hoisted_keys(optimized_graph(first))[0]
        a, b = two.persist(first), two.persist(second)  # the second while the first runs
        wait(a + b)
        assert two.run_on_scheduler(_memory_transitions, key) == 1
        assert two.gather(two.compute(b)) == [uses_mapper(i + 100, Mapper(30_105)) for i in range(TASKS)]
        wait(two.persist(later))
        assert two.run_on_scheduler(_memory_transitions, key) == 2
    print(f"config route: graph bytes per persist {sent.graphs}")


def test_two_persists_send_the_object_once_deduplicate_route(two):
    _ready(two, 2)
    plain = [delayed(uses_mapper)(i, Mapper(30_106)) for i in range(20)]
    with GraphBytes(two) as before:
        wait(two.persist(plain))
    with GraphBytes(two) as sent:
        # 20 equal copies, as a model loaded once per task: merged with merge-equal "always"
        copies = [delayed(uses_mapper)(i, Mapper(30_106)) for i in range(20)]
        (first,) = dedupgraph.deduplicate(copies, client=two, merge_equal="always")
        a = two.persist(first)
        wait(a)
        (second,) = dedupgraph.deduplicate(
            [delayed(uses_mapper)(i + 100, Mapper(30_106)) for i in range(20)], client=two, merge_equal="always"
        )
        b = two.persist(second)
        assert two.gather(two.compute(b)) == [uses_mapper(i + 100, Mapper(30_106)) for i in range(20)]
    assert sent.scattered == 1  # the second call reused the future on the cluster
    assert all(n < 50_000 for n in sent.graphs), sent.graphs  # graphs carry references only
    assert before.graphs[0] > 10 * max(sent.graphs)  # 20 distinct copies of 241 KB
    print(f"plain graph bytes {before.graphs}; deduplicate graph bytes {sent.graphs}, 1 scatter of 241 KB")


def test_concurrent_submissions_from_threads(two):
    _ready(two, 2)
    barrier = threading.Barrier(4)

    def work(n):
        mapper = Mapper(30_200 + n)  # each thread its own large object
        tasks = [delayed(uses_mapper)(i, mapper) for i in range(12)]
        barrier.wait()
        if n % 2:
            (tasks,) = dedupgraph.deduplicate(tasks, client=two, broadcast=n == 3)
            got = two.gather(two.compute(tasks))
        else:
            got = two.gather(two.compute(two.persist(tasks)))
        return got == [uses_mapper(i, mapper) for i in range(12)]

    with dedupgraph.enable(), ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
    gc.collect()
