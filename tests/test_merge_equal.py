"""merge-equal: distinct objects of equal content share a key only where no task can tell.

Plain dask never shares distinct objects; functions that fill the buffer they
are given must get the same results with the pass on, on every scheduler.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed
from distributed import Client, LocalCluster

import dedupgraph

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper

BUFFER = 100_000  # float64: 800 KB, far above min-bytes


def fill(buf, i):
    buf[:] = i
    return buf


def fill_twice(buf, i):
    """Each buffer carried by two tasks: the pass hoists it, by identity."""
    return [delayed(fill)(buf, i), delayed(fill)(buf, i)]


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _filled(parts, **kwargs):
    return [float(np.unique(buf)[0]) for buf in dask.compute(*parts, **kwargs)]


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_filled_buffers_keep_their_own_values(scheduler, process_pool):
    kwargs = {"scheduler": scheduler, **({"pool": process_pool} if scheduler == "processes" else {})}
    parts = [delayed(fill)(np.zeros(BUFFER), i) for i in range(6)]
    twice = [p for i in range(6) for p in fill_twice(np.zeros(BUFFER), i)]
    plain = _filled(parts, **kwargs), _filled(twice, **kwargs)
    assert plain == ([0, 1, 2, 3, 4, 5], [i for i in range(6) for _ in range(2)])
    with dedupgraph.enable():
        assert (_filled(parts, **kwargs), _filled(twice, **kwargs)) == plain
        assert hoisted_keys(optimized_graph(parts)) == []  # each buffer is carried once
        assert len(hoisted_keys(optimized_graph(twice))) == 6  # one key per buffer, none merged


def test_filled_buffers_on_distributed():
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            parts = [delayed(fill)(np.zeros(BUFFER), i) for i in range(6)]
            twice = [p for i in range(6) for p in fill_twice(np.zeros(BUFFER), i)]
            plain = _filled(parts), _filled(twice)
            with dedupgraph.enable():
                assert (_filled(parts), _filled(twice)) == plain
    assert plain[0] == [0, 1, 2, 3, 4, 5]


def test_store_into_equal_inline_targets():
    a = da.arange(40, chunks=10, dtype="f8")
    b = da.arange(40, chunks=10, dtype="f8") * 10
    at, bt = np.zeros(40), np.zeros(40)
    with dedupgraph.enable(min_bytes=1):
        da.store([a, b], [at, bt], scheduler="threads")
    np.testing.assert_array_equal(at, np.arange(40))
    np.testing.assert_array_equal(bt, np.arange(40) * 10)


def test_always_merges_equal_copies_and_never_merges_none():
    copies = [delayed(uses_mapper)(i, Mapper()) for i in range(4)]  # a model loaded in a loop
    expected = dask.compute(*copies, scheduler="sync")
    for merge_equal, keys in [("immutable", 0), ("always", 1), ("never", 0)]:
        with dedupgraph.enable(merge_equal=merge_equal):
            assert len(hoisted_keys(optimized_graph(copies))) == keys
            assert dask.compute(*copies, scheduler="threads") == expected


def test_immutable_contents_merge_by_default():
    def frozen():
        array = np.arange(20_000, dtype="f8")
        array.flags.writeable = False
        return array

    blobs = [delayed(len)(bytes(100_000)) for _ in range(3)]  # three equal bytes objects
    arrays = [delayed(np.sum)(frozen()) for _ in range(3)]  # three equal read-only arrays
    graph = optimized_graph(blobs, arrays)
    assert hoisted_keys(graph) == []
    with dedupgraph.enable():
        assert [k.split("-")[1] for k in hoisted_keys(optimized_graph(blobs, arrays))] == ["bytes", "ndarray"]
        assert dask.compute(*blobs, *arrays, scheduler="threads") == (100_000,) * 3 + (frozen().sum(),) * 3
    with dedupgraph.enable(merge_equal="never"):
        assert len(hoisted_keys(optimized_graph(blobs, arrays))) == 0  # each carried by one task


def test_one_object_is_hoisted_whatever_the_setting():
    m = Mapper()
    parts = [delayed(uses_mapper)(i, m) for i in range(4)]
    for merge_equal in ("immutable", "always", "never"):
        with dedupgraph.enable(merge_equal=merge_equal):
            (key,) = hoisted_keys(optimized_graph(parts))
            assert key.count("-") == 2  # the content key, reused by other graphs of the same content


def test_equal_copies_kept_apart_get_distinct_stable_keys():
    first, second = Mapper(), Mapper()
    parts = [delayed(uses_mapper, pure=True)(i, m, dask_key_name=f"use-{n}-{i}") for n, m in enumerate((first, second)) for i in range(3)]
    with dedupgraph.enable():
        keys = hoisted_keys(optimized_graph(parts))
        again = hoisted_keys(optimized_graph(parts))
    assert len(keys) == 2 and keys == again
    assert len({k.rsplit("-", 1)[0] for k in keys}) == 1  # same content, told apart by the object


def two_methods(a, b, i):
    return a(i) + b(i)


def test_copies_kept_apart_never_share_a_key_when_wrappers_recur():
    first, second = Mapper(), Mapper()  # equal, distinct, mutable
    # the first task carries both; later tasks carry new bound methods of the second only
    parts = [delayed(two_methods)(first.method, second.method, 0)]
    parts += [delayed(second.method)(i) for i in range(1, 4)] + [delayed(first.method)(9)]
    expected = dask.compute(*parts, scheduler="sync")
    with dedupgraph.enable():
        keys = hoisted_keys(optimized_graph(parts))
        assert len(keys) == len(set(keys)) == 2
        assert dask.compute(*parts, scheduler="threads") == expected
