"""Which values no task can change."""

from __future__ import annotations

import functools
import mmap

import numpy as np
import pandas as pd
import pytest

from dedupgraph.core.immutability import is_immutable, merge_policy


def _read_only(array):
    array.flags.writeable = False
    return array


def _frozen_frame():
    frame = pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5)})
    for column in frame._mgr.arrays:
        column.flags.writeable = False
    return frame


def module_level(x, y=(1, 2)):
    return x


def _closure():
    state = []

    def inner(x):
        state.append(x)

    return inner


IMMUTABLE = {
    "none": None,
    "int": 3,
    "str": "text",
    "bytes": b"bytes",
    "range": range(9),
    "nested tuple": ("a", (1, b"b"), frozenset({2.5})),
    "numpy scalar": np.float64(1.5),
    "dtype": np.dtype("f8"),
    "read-only array": _read_only(np.arange(10)),
    "read-only view of read-only base": _read_only(np.arange(10))[2:5],
    "array over bytes": np.frombuffer(b"\0" * 64, dtype="u1"),
    "int index": pd.Index([1, 2, 3]),
    "string index": pd.Index(["a", "b"], dtype=object),
    "read-only frame": _frozen_frame(),
    "type": dict,
    "module": np,
    "plain function": module_level,
}

MUTABLE = {
    "list": [1],
    "dict": {"a": 1},
    "set": {1},
    "bytearray": bytearray(b"x"),
    "tuple holding a list": (1, [2]),
    "writeable array": np.arange(10),
    "read-only view of writeable base": _read_only(np.arange(10)[2:5]),
    "read-only object array": _read_only(np.array([[1], [2]], dtype=object)),
    "series": pd.Series([1, 2]),
    "frame": pd.DataFrame({"a": [1.0]}),
    "frame with attrs": _frozen_frame().pipe(lambda f: f.attrs.update(x=1) or f),
    "object index of lists": pd.Index([[1], [2]], dtype=object),
    "closure": _closure(),
    "function with attributes": functools.update_wrapper(lambda x: x, module_level),
    "partial": functools.partial(module_level, 1),
    "instance": object(),
    "deep tuple": functools.reduce(lambda t, _: (t,), range(100), ()),
}


@pytest.mark.parametrize("name", sorted(IMMUTABLE))
def test_immutable(name):
    assert is_immutable(IMMUTABLE[name])


@pytest.mark.parametrize("name", sorted(MUTABLE))
def test_mutable(name):
    assert not is_immutable(MUTABLE[name])


def test_array_over_a_writeable_mmap_is_mutable():
    with mmap.mmap(-1, 64) as buffer:
        array = _read_only(np.frombuffer(buffer, dtype="u1"))
        assert not is_immutable(array)
        del array


def test_policies():
    assert merge_policy("always")(MUTABLE["list"]) and not merge_policy("never")(IMMUTABLE["bytes"])
    assert merge_policy("immutable") is is_immutable
