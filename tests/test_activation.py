"""The documented spellings switch the pass on, chain dask's own optimizers, and switch off."""

from __future__ import annotations

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask import delayed

import dedupgraph
from dedupgraph.core.pipeline import task_graph

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper


def _keys_without_hoisted(graph):
    return {k for k in graph if k not in hoisted_keys(graph)}


def test_array_optimize_spelling_chains_dask_array_optimize():
    m = Mapper()
    x = (da.arange(20, chunks=2).map_blocks(uses_mapper, m) + 1)[3:17].sum()
    plain = optimized_graph(x)
    with dask.config.set(array_optimize=dedupgraph.dedup):
        ours = optimized_graph(x)
        result = x.compute()
    # culling, blockwise and slice fusion happened exactly as without us
    assert _keys_without_hoisted(ours) == set(plain)
    assert len(hoisted_keys(ours)) == 1
    assert result == x.compute()


def test_delayed_and_bag_spellings_chain_their_defaults():
    m = Mapper()
    xs = [delayed(uses_mapper)(i, m) for i in range(6)]
    unused = delayed(uses_mapper)(99, m)  # in the graph of nothing we compute
    total = delayed(sum)(xs)
    with dask.config.set(delayed_optimize=dedupgraph.dedup_delayed):
        graph = optimized_graph(total)
        assert total.compute() == sum(uses_mapper(i, m) for i in range(6))
    assert unused.key not in graph
    assert _keys_without_hoisted(graph) == set(optimized_graph(total))

    b = db.from_sequence(range(12), npartitions=6).map(uses_mapper, m).filter(bool)
    with dask.config.set(bag_optimize=dedupgraph.dedup_bag):
        bgraph = optimized_graph(b)
        assert b.compute() == [uses_mapper(i, m) for i in range(12)]
    assert _keys_without_hoisted(bgraph) == set(optimized_graph(b))  # fused like dask's own
    assert len(hoisted_keys(bgraph)) == 1


def test_enable_globally_then_disable():
    try:
        dedupgraph.enable()
        assert dask.config.get("array_optimize") is dedupgraph.dedup
        assert dask.config.get("delayed_optimize") is dedupgraph.dedup_delayed
        assert dask.config.get("bag_optimize") is dedupgraph.dedup_bag
    finally:
        dedupgraph.disable()
    for key in ("array_optimize", "delayed_optimize", "bag_optimize"):
        assert not isinstance(dask.config.get(key, None), dedupgraph.Deduplicator)
    m = Mapper()
    assert hoisted_keys(optimized_graph([delayed(uses_mapper)(i, m) for i in range(4)])) == []
    # dask's own optimization still runs: blockwise layers fused as before
    x = da.arange(4, chunks=2).map_blocks(uses_mapper, m) + 1
    assert len(optimized_graph(x)) == 4


def test_enable_as_context_manager_restores_previous_config():
    def mine(dsk, keys, **kwargs):
        return dsk

    with dask.config.set(array_optimize=mine, **{"dedupgraph.min-count": 5}):
        with dedupgraph.enable(min_count=3):
            assert dask.config.get("array_optimize") is dedupgraph.dedup
            assert dask.config.get("dedupgraph.min-count") == 3
        assert dask.config.get("array_optimize") is mine
        assert dask.config.get("dedupgraph.min-count") == 5
        assert dask.config.get("delayed_optimize", None) is None


def test_enable_settings_apply():
    m = Mapper()
    xs = [delayed(uses_mapper)(i, m) for i in range(4)]
    with dedupgraph.enable(min_count=5):
        assert hoisted_keys(optimized_graph(xs)) == []
    with dedupgraph.enable(min_count=4):
        assert len(hoisted_keys(optimized_graph(xs))) == 1


def test_disable_leaves_other_optimizers_alone():
    def mine(dsk, keys, **kwargs):
        return dsk

    with dask.config.set(array_optimize=mine, delayed_optimize=dedupgraph.dedup_delayed):
        with dedupgraph.disable():
            assert dask.config.get("array_optimize") is mine
            assert dask.config.get("delayed_optimize") is dedupgraph.dedup_delayed.base


def test_deduplicator_over_another_base():
    calls = []

    def base(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.array.optimization.optimize(dsk, keys, **kwargs)

    m = Mapper()
    x = da.arange(8, chunks=2).map_blocks(uses_mapper, m)
    opt = dedupgraph.Deduplicator(base=base, min_bytes="100 KiB")
    with dask.config.set(array_optimize=opt):
        graph = optimized_graph(x)
        np.testing.assert_array_equal(x.compute(), np.arange(8) + len(m.s))
    assert calls and len(hoisted_keys(graph)) == 1
    with pytest.raises(ValueError, match="base"):
        dedupgraph.Deduplicator(base="optimize")


def test_pickled_deduplicator_carries_the_settings_in_force():
    import pickle

    with dask.config.set({"dedupgraph.min-count": 9}):
        blob = pickle.dumps(dedupgraph.dedup)
    restored = pickle.loads(blob)
    assert restored.effective_settings().min_count == 9
    assert dedupgraph.dedup.effective_settings().min_count == 2
    assert restored.base is dedupgraph.dedup.base
    explicit = pickle.loads(pickle.dumps(dedupgraph.Deduplicator(min_bytes=5)))
    assert explicit.effective_settings().min_bytes == 5
