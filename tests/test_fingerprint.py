"""Fingerprints: content identity, pickled once per object, small values never pickled."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from dedupgraph.core.fingerprint import FingerprintMemo, content_fingerprint, is_obviously_small, label_of

from payloads import ExplodingPickle, Mapper, Unpicklable


def test_equal_content_equal_digest_distinct_content_distinct_digest():
    a, b = Mapper(), Mapper()
    assert a is not b
    assert content_fingerprint(a) == content_fingerprint(b)
    assert content_fingerprint(a).digest != content_fingerprint(Mapper(rows=30_001)).digest


def test_memo_pickles_each_object_once():
    memo = FingerprintMemo(min_bytes=1024)
    m = Mapper()
    fps = {memo.fingerprint(m) for _ in range(1000)}
    assert len(fps) == 1 and memo.pickled == 1


@pytest.mark.parametrize(
    "value",
    [None, 3, 2.5, True, "short", b"bytes", np.float64(1), np.dtype("f8"), (1, 2.0, "x"), slice(1, 2), np.zeros(10)],
)
def test_small_values_are_never_pickled(value):
    memo = FingerprintMemo(min_bytes=1024)
    assert memo.fingerprint(value) is None and memo.pickled == 0


@pytest.mark.parametrize("value", ["x" * 1000, np.zeros(1000), np.zeros(3, dtype=object), (1,) * 9, Mapper()])
def test_possibly_large_values_are_candidates(value):
    assert not is_obviously_small(value, 1024)


def test_numpy_buffers_are_hashed_in_place():
    arr = np.arange(1_000_000)
    fp = content_fingerprint(arr)
    assert fp.nbytes >= arr.nbytes
    assert fp.digest == content_fingerprint(arr.copy()).digest
    assert fp.digest != content_fingerprint(arr[::-1].copy()).digest


@pytest.mark.parametrize("cls", [Unpicklable, ExplodingPickle])
def test_unpicklable_values_get_no_fingerprint(cls):
    memo = FingerprintMemo(min_bytes=1024)
    assert memo.fingerprint(cls()) is None


def test_labels_are_letters_only():
    m = Mapper()
    assert label_of(m) == "Mapper"
    assert label_of(m.method) == "Mapper-method"
    assert label_of(functools.partial(sum, 1)) == "partial-sum"
    assert label_of(lambda: 1) == "function-lambda"
    assert label_of(pd.Series([1])) == "Series"
    assert label_of(np.zeros(2)) == "ndarray"


class _Constant:
    """A hash that collides for every input."""

    def __init__(self, data: bytes = b"") -> None:
        pass

    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 32


def test_hash_collisions_are_never_merged():
    memo = FingerprintMemo(min_bytes=1024, hasher=_Constant)
    a, a_twin, b = Mapper(), Mapper(), Mapper(rows=40_000)
    fa, fa_twin, fb = memo.fingerprint(a), memo.fingerprint(a_twin), memo.fingerprint(b)
    assert fa.digest == fa_twin.digest == "0" * 32  # equal bytes: merged
    assert fb.digest != fa.digest  # same hash, different bytes: kept apart
    assert memo.fingerprint(Mapper(rows=40_000)).digest == fb.digest


def test_collision_end_to_end(monkeypatch):
    from dask import delayed

    import dedupgraph
    import dedupgraph.core.pipeline as optimizer
    from payloads import hoisted_keys, optimized_graph, uses_mapper

    monkeypatch.setattr(
        optimizer, "FingerprintMemo", lambda *a, **k: FingerprintMemo(*a, hasher=_Constant, **k)
    )
    small, large = Mapper(), Mapper(rows=40_000)
    colls = [delayed(uses_mapper)(i, m) for i in range(3) for m in (small, large)]
    with dedupgraph.enable():
        assert len(hoisted_keys(optimized_graph(*colls))) == 2
        assert [c.compute() for c in colls] == [uses_mapper(i, m) for i in range(3) for m in (small, large)]


def test_nondeterministic_pickles_are_not_merged():
    import itertools

    counter = itertools.count()

    class Shifty:
        def __init__(self) -> None:
            self.payload = bytes(100_000)

        def __reduce__(self):
            return (bytes, (self.payload + str(next(counter)).encode(),))

    memo = FingerprintMemo(min_bytes=1024)
    one, two = Shifty(), Shifty()
    assert memo.fingerprint(one).digest != memo.fingerprint(two).digest
    assert memo.fingerprint(one) is memo.fingerprint(one)  # still pickled once per object
