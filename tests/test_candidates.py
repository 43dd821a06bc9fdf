"""Stage 1: which large contents each task carries, and where."""

from __future__ import annotations

import functools

import dask.array as da
import numpy as np
from dask import delayed

from dedupgraph.candidates import find_candidates
from dedupgraph.fingerprint import FingerprintMemo
from dedupgraph.transform import ARGUMENT, CONTAINER, FUNCTION, KEYWORD, SUBGRAPH, SUBGRAPH_INPUT

from payloads import Mapper, optimized_graph, uses_kw, uses_mapper


def _found(*colls, min_bytes=64 * 1024, record_from_bytes=None):
    graph = optimized_graph(*colls)
    return find_candidates(graph, FingerprintMemo(min_bytes), record_from_bytes)


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


def test_equal_distinct_objects_share_one_digest_keeping_the_first():
    first, second = Mapper(), Mapper()
    found = _found(delayed(uses_kw)(1, mapper=first), delayed(uses_kw)(2, mapper=second))
    (digest,) = found.fingerprints
    assert len(found.keys[digest]) == 2
    assert found.values[digest] is first or found.values[digest] is second


def test_record_floor():
    m = Mapper(rows=100)
    colls = [delayed(uses_mapper)(i, m) for i in range(2)]
    assert _found(*colls).fingerprints == {}
    assert len(_found(*colls, record_from_bytes=0).fingerprints) >= 1
