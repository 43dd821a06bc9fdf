"""Many passes at once in threads, as the scheduler materializes graphs concurrently."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
from dask import delayed

import dedupgraph

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper

THREADS = 8
OPTIMIZER_KEYS = ("array_optimize", "delayed_optimize", "bag_optimize")


def _work(i: int, shared: Mapper, barrier: threading.Barrier):
    own = Mapper(rows=20_000 + i)  # a content of its own per thread
    colls = [delayed(uses_mapper)(j, own) for j in range(20)] + [delayed(uses_mapper)(j, shared) for j in range(20)]
    arr = da.arange(40, chunks=2).map_blocks(uses_mapper, own)
    barrier.wait()  # all threads start their passes together
    graph = optimized_graph(*colls)
    results = dask.compute(*colls, scheduler="threads")
    total = arr.sum().compute(scheduler="threads")
    return i, own, graph, results, total


def test_concurrent_passes_are_independent_and_correct():
    shared = Mapper()
    barrier = threading.Barrier(THREADS)
    # Switched on once for all threads, as a scheduler's configuration is: dask's
    # config is the process's, and ``enable()`` blocks that overlap in threads do
    # not nest (the first to exit switches the pass off under the others, so a
    # thread's collections could reach dask half with the pass, half without).
    with dedupgraph.enable(), ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(lambda i: _work(i, shared, barrier), range(THREADS)))
    for i, own, graph, results, total in outcomes:
        labels = [k.split("-")[1] for k in hoisted_keys(graph)]
        assert labels == ["Mapper", "Mapper"]  # its own object and the shared one
        assert list(results) == [uses_mapper(j, own) for j in range(20)] + [
            uses_mapper(j, shared) for j in range(20)
        ]
        assert total == (np.arange(40) + len(own.s)).sum()
    # the shared content got the same key in every thread
    all_keys = {key for _, _, graph, _, _ in outcomes for key in hoisted_keys(graph)}
    assert len(all_keys) == THREADS + 1


def test_deduplicate_in_threads_needs_no_switch_and_leaves_the_config_alone():
    shared = Mapper()
    barrier = threading.Barrier(THREADS)
    before = {key: dask.config.get(key, None) for key in OPTIMIZER_KEYS}

    def work(i: int):
        own = Mapper(rows=20_000 + i)
        colls = [delayed(uses_mapper)(j, own) for j in range(20)] + [delayed(uses_mapper)(j, shared) for j in range(20)]
        barrier.wait()
        deduped = dedupgraph.deduplicate(colls, client=False)[0]
        graph = {key: node for d in deduped for key, node in dict(d.dask).items()}
        return own, hoisted_keys(graph), dask.compute(*deduped, scheduler="threads")

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(work, range(THREADS)))
    for own, keys, results in outcomes:
        assert [k.split("-")[1] for k in keys] == ["Mapper", "Mapper"]
        assert list(results) == [uses_mapper(j, own) for j in range(20)] + [
            uses_mapper(j, shared) for j in range(20)
        ]
    assert {key: dask.config.get(key, None) for key in OPTIMIZER_KEYS} == before


def test_no_module_level_state_changes_during_a_pass():
    import dedupgraph.core.candidates
    import dedupgraph.core.fingerprint
    import dedupgraph.core.pipeline
    import dedupgraph.core.plan
    import dedupgraph.core.rewrite
    import dedupgraph.core.transform
    import dedupgraph.routes.config

    modules = [
        dedupgraph.core.candidates,
        dedupgraph.core.fingerprint,
        dedupgraph.core.pipeline,
        dedupgraph.routes.config,
        dedupgraph.core.plan,
        dedupgraph.core.rewrite,
        dedupgraph.core.transform,
    ]

    def snapshot():
        return {
            (m.__name__, name): repr(value)
            for m in modules
            for name, value in vars(m).items()
            if isinstance(value, (dict, list, set))
        }

    before = snapshot()
    with dedupgraph.enable():
        optimized_graph(*[delayed(uses_mapper)(j, Mapper()) for j in range(10)])
    assert snapshot() == before
