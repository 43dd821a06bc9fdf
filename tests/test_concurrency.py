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


def _work(i: int, shared: Mapper, barrier: threading.Barrier):
    own = Mapper(rows=20_000 + i)  # a content of its own per thread
    colls = [delayed(uses_mapper)(j, own) for j in range(20)] + [delayed(uses_mapper)(j, shared) for j in range(20)]
    arr = da.arange(40, chunks=2).map_blocks(uses_mapper, own)
    barrier.wait()  # all threads start their passes together
    with dedupgraph.enable():
        graph = optimized_graph(*colls)
        results = dask.compute(*colls, scheduler="threads")
        total = arr.sum().compute(scheduler="threads")
    return i, own, graph, results, total


def test_concurrent_passes_are_independent_and_correct():
    shared = Mapper()
    barrier = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
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
