"""Stage 1: which large contents each task carries, and where."""

from __future__ import annotations

import functools

import dask.array as da
import numpy as np
from dask import delayed

from dedupgraph.core.candidates import find_candidates
from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.transform import ARGUMENT, CONTAINER, FUNCTION, KEYWORD, SUBGRAPH, SUBGRAPH_INPUT

from payloads import Mapper, optimized_graph, uses_kw, uses_mapper


def _found(*colls, min_bytes=64 * 1024, record_from_bytes=None, **kwargs):
    graph = optimized_graph(*colls)
    return find_candidates(graph, FingerprintMemo(min_bytes), record_from_bytes, **kwargs)


def test_each_task_counted_once_and_positions_recorded():
    m = Mapper()
    colls = [delayed(lambda a, b, mapper: len(a.s))(m, [m], mapper=m) for _ in range(3)]
    found = _found(*colls)
    (digest,) = found.fingerprints
    assert len(found.keys[digest]) == 3
    assert found.positions[digest] == {ARGUMENT, CONTAINER, KEYWORD}
    assert found.memo.pickled >= 1


def test_function_and_subgraph_positions():
    m = Mapper()
    fn = _found(*[delayed(functools.partial(uses_mapper, mapper=m))(i) for i in range(2)])
    assert list(fn.positions.values()) == [{FUNCTION}]
    # blockwise fusion passes the object as an inline input of the fused task
    blockwise = da.zeros((4, 2), chunks=(1, 2)).map_blocks(uses_mapper, m, meta=np.array(()))
    assert list(_found(blockwise).positions.values()) == [{SUBGRAPH_INPUT}]
    # linear fusion keeps it as an argument of an inner task
    linear = _found(da.arange(4, chunks=2).map_blocks(uses_mapper, m))
    assert list(linear.positions.values()) == [{SUBGRAPH}]
    inner = _found(da.arange(4, chunks=2).map_blocks(m.method) + 1)
    assert list(inner.positions.values()) == [{SUBGRAPH}]


def test_equal_distinct_objects_share_one_group_only_where_they_may_merge():
    first, second = Mapper(), Mapper()
    colls = [delayed(uses_kw)(1, mapper=first), delayed(uses_kw)(2, mapper=second), delayed(uses_kw)(3, mapper=first)]
    merged = _found(*colls, may_merge=lambda value: True)
    (digest,) = merged.fingerprints
    assert len(merged.keys[digest]) == 3
    assert merged.values[digest] is first or merged.values[digest] is second
    assert merged.apart == {}
    apart = _found(*colls)  # by default each object is a group of its own
    assert sorted(len(keys) for keys in apart.keys.values()) == [1, 2]
    assert {apart.values[g] is first for g in apart.fingerprints} == {True, False}
    assert list(apart.apart) == [digest] and sorted(apart.apart[digest]) == sorted(apart.fingerprints)
    assert all(group.startswith(digest + ":") for group in apart.fingerprints)


def test_wrappers_of_the_same_objects_share_a_group():
    m = Mapper()
    methods = [delayed(m.method)(i) for i in range(3)]  # three bound method objects, one instance
    partials = [delayed(functools.partial(uses_mapper, mapper=m))(i) for i in range(3)]
    found = _found(*methods, *partials)
    assert sorted(len(keys) for keys in found.keys.values()) == [3, 3]
    other = _found(delayed(m.method)(0), delayed(Mapper().method)(1))  # equal instances, not the same
    assert sorted(len(keys) for keys in other.keys.values()) == [1, 1]


def test_record_floor():
    m = Mapper(rows=100)
    colls = [delayed(uses_mapper)(i, m) for i in range(2)]
    assert _found(*colls).fingerprints == {}
    assert len(_found(*colls, record_from_bytes=0).fingerprints) >= 1
