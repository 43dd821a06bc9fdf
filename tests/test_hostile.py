"""Objects that try hard to break the pass: results must never change, nothing may fail."""

from __future__ import annotations

import itertools
import logging
import time

import dask
import numpy as np
import pandas as pd
import pytest
from dask import delayed

import dedupgraph

from payloads import hoisted_keys, optimized_graph

N = 6


def _run(colls, **settings):
    """Results without and with the pass, and the pass's graph."""
    expected = dask.compute(*colls, scheduler="sync")
    with dedupgraph.enable(**settings):
        graph = optimized_graph(*colls)
        got = dask.compute(*colls, scheduler="threads")
    return expected, got, graph


def _describe(obj, i):
    return (type(obj).__name__, getattr(obj, "tag", None), i)


class Shifty:
    """Every pickle differs: the content can never be trusted to be shared."""

    counter = itertools.count()

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.payload = bytes(100_000)

    def __reduce__(self):
        return (Shifty, (next(self.counter),))


def test_nondeterministic_pickles_are_never_shared():
    objs = [Shifty(i) for i in range(N)]
    colls = [delayed(_describe)(o, i) for i, o in enumerate(objs)] * 2
    expected, got, graph = _run(colls)
    assert got == expected
    assert hoisted_keys(graph) == []  # each object appears twice, but no two tasks' bytes agree


class Deep:
    """Pickling recurses until Python gives up."""

    def __init__(self, depth: int) -> None:
        self.tag = depth
        self.payload = bytes(100_000)
        node: list = []
        for _ in range(depth):
            node = [node]
        self.nested = node


def test_deep_recursion_in_pickling_stays_inline():
    obj = Deep(100_000)
    colls = [delayed(_describe)(obj, i) for i in range(N)]
    expected, got, graph = _run(colls)
    assert got == expected and hoisted_keys(graph) == []


class Slow:
    pickles = 0

    def __init__(self) -> None:
        self.tag = "slow"
        self.payload = bytes(100_000)

    def __reduce__(self):
        type(self).pickles += 1
        time.sleep(0.2)
        return (_rebuild_slow, (self.payload,))


def _rebuild_slow(payload: bytes) -> Slow:
    obj = Slow()
    obj.payload = payload
    return obj


def test_slow_pickling_is_paid_once_per_object():
    obj = Slow()
    colls = [delayed(_describe)(obj, i) for i in range(50)]
    Slow.pickles = 0
    with dedupgraph.enable():
        graph = optimized_graph(*colls)
    assert Slow.pickles == 1
    assert len(hoisted_keys(graph)) == 1


def test_hundreds_of_megabytes_make_one_hoisted_copy():
    big = np.ones(40_000_000)  # 320 MB, hashed in place
    colls = [delayed(lambda a, i: float(a[i]) + i)(big, i) for i in range(N)]
    with dedupgraph.enable():
        graph = optimized_graph(*colls)
        got = dask.compute(*colls, scheduler="threads")
    (key,) = hoisted_keys(graph)
    assert graph[key].value is big  # the object itself, no copy
    assert got == tuple(1.0 + i for i in range(N))


class AlwaysEqual:
    """Equal to everything, but each carries different bytes."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.payload = bytes([tag]) * 100_000

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_equal_but_differently_pickled_objects_are_not_merged():
    objs = [AlwaysEqual(i) for i in range(3)]
    colls = [delayed(lambda o, i: (o.tag, o.payload[0], i))(o, i) for o in objs for i in range(2)]
    expected, got, graph = _run(colls)
    assert got == expected
    assert len(hoisted_keys(graph)) == 3


def test_numpy_views_of_a_bigger_buffer():
    base = np.arange(1_000_000, dtype="f8")
    views = [base[:100_000], base[100_000:200_000], base[::10], base[:100_000].view()]
    colls = [delayed(lambda v, i: float(v.sum()) + i)(v, i) for v in views for i in range(2)]
    expected, got, graph = _run(colls, merge_equal="always")
    assert got == expected
    # the first and last views hold the same bytes: they share a key; the others have their own
    assert len(hoisted_keys(graph)) == 3
    # by default, writeable views are never merged: each is hoisted on its own
    expected, got, graph = _run(colls)
    assert got == expected
    assert len(hoisted_keys(graph)) == 4


def test_pandas_object_dtype():
    s1 = pd.Series([f"word-{i}" for i in range(20_000)], dtype=object)
    s2 = pd.Series([f"word-{i}" for i in range(20_000)], dtype=object)
    s3 = pd.Series([("tuple", i) for i in range(20_000)], dtype=object)
    colls = [delayed(lambda s, i: (len(s), s.iloc[i]))(s, i) for s in (s1, s2, s3) for i in range(2)]
    expected, got, graph = _run(colls, merge_equal="always")
    assert got == expected
    assert len(hoisted_keys(graph)) == 2  # s1 and s2 are equal content
    expected, got, graph = _run(colls)  # by default, mutable Series are never merged
    assert got == expected
    assert len(hoisted_keys(graph)) == 3


@pytest.mark.parametrize("exc", [TypeError, MemoryError, KeyboardInterrupt])
def test_exceptions_from_reduce(exc):
    class Raises:
        tag = exc.__name__

        def __init__(self) -> None:
            self.payload = bytes(100_000)

        def __reduce__(self):
            raise exc("nope")

    obj = Raises()
    colls = [delayed(_describe)(obj, i) for i in range(N)]
    if exc is KeyboardInterrupt:
        # an interrupt is the user's, not a pickling failure: it must reach them
        with dedupgraph.enable(), pytest.raises(KeyboardInterrupt):
            optimized_graph(*colls)
        return
    expected, got, graph = _run(colls)
    assert got == expected and hoisted_keys(graph) == []


class HostileGetattr:
    """Lookups of the attributes dedupgraph probes raise something odd (dask's own must work)."""

    def __init__(self) -> None:
        self.tag = "hostile"
        self.payload = bytes(100_000)

    def __getattr__(self, name: str):
        if name.startswith("__dedupgraph") or name in ("__self__", "__func__"):
            raise RuntimeError(f"no {name} for you")
        raise AttributeError(name)


def test_hostile_getattr_is_still_hoisted():
    obj = HostileGetattr()
    colls = [delayed(lambda o, i: (o.tag, i))(obj, i) for i in range(N)]
    expected, got, graph = _run(colls)
    assert got == expected
    assert [k.split("-")[1] for k in hoisted_keys(graph)] == ["HostileGetattr"]


class EqualityMeta(type):
    """A metaclass that defines ``__eq__`` without ``__hash__``: its classes are unhashable."""

    def __eq__(cls, other: object) -> bool:
        return cls is other

    __hash__ = None  # type: ignore[assignment]


class UnhashableClass(metaclass=EqualityMeta):
    def __init__(self) -> None:
        self.payload = np.arange(20_000)


def test_instances_of_unhashable_classes_do_not_fail_the_pass(caplog):
    # ``type(obj) in some_set`` raises for these: the pass used to fail on them
    # and leave the whole graph alone, and inspect() raised
    obj = UnhashableClass()
    colls = [delayed(lambda o, i: int(o.payload[-1]) + i)(obj, i) for i in range(N)]
    with caplog.at_level(logging.WARNING, logger="dedupgraph"):
        expected, got, graph = _run(colls)
    assert got == expected
    assert "pass failed" not in caplog.text
    # cloudpickle cannot pickle them either (it keys a dict by class): inline, as plain dask
    assert hoisted_keys(graph) == []
    (row,) = [r for r in dedupgraph.inspect(*colls).rows if r.label == "UnhashableClass"]
    assert row.reason == "unpicklable"
