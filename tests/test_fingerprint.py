"""Fingerprints: content identity, pickled once per object, small values never pickled."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from dedupgraph.fingerprint import FingerprintMemo, content_fingerprint, is_obviously_small, label_of

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
