"""Stage 1: fingerprint candidate values by the content of their pickle.

>>> memo = FingerprintMemo(min_bytes=64 * 1024)
>>> fp = memo.fingerprint(list(range(100_000)))
>>> fp.nbytes > 64 * 1024, len(fp.digest)
(True, 32)

A fingerprint is the xxh3-128 digest of an object's cloudpickle bytes and the
size of those bytes.  The memo is keyed by identity, so an object that 100,000
tasks share is pickled once.  Obviously small values are never pickled.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import xxhash

logger = logging.getLogger("dedupgraph")

_SCALARS: frozenset[type] = frozenset(
    {type(None), bool, int, float, complex, slice, range, type(Ellipsis)}
)
_SMALL_KINDS = (np.generic, np.dtype)  # numpy scalars, and dtypes (each dtype is its own class)
_TEXT = (str, bytes, bytearray)
_SMALL_TUPLE_LEN = 8


@dataclass(frozen=True)
class Fingerprint:
    """Content identity of one value: digest of its pickle, its pickled size, a label."""

    digest: str
    nbytes: int
    label: str


class FingerprintMemo:
    """Fingerprints values once each, by identity, for the length of one pass.

    >>> memo = FingerprintMemo(min_bytes=1024)
    >>> memo.fingerprint(3) is None  # obviously small: never pickled
    True

    Not shared between passes: each pass builds its own, so concurrent passes
    in the scheduler's threads never touch each other's state.
    """

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        # id -> (value, fingerprint); holding the value keeps its id from being reused
        self._seen: dict[int, tuple[Any, Fingerprint | None]] = {}
        self.pickled = 0

    def fingerprint(self, value: Any) -> Fingerprint | None:
        """The value's fingerprint, or None for small or unpicklable values."""
        if is_obviously_small(value, self.min_bytes):
            return None
        found = self._seen.get(id(value))
        if found is not None:
            return found[1]
        fp = self._pickled_fingerprint(value)
        self._seen[id(value)] = (value, fp)
        return fp

    def _pickled_fingerprint(self, value: Any) -> Fingerprint | None:
        self.pickled += 1
        try:
            return content_fingerprint(value)
        except Exception as e:  # any failure to pickle just leaves the value inline
            logger.debug(
                "left %s inline: pickling failed (%s: %s)",
                type(value).__name__,
                type(e).__name__,
                e,
            )
            return None


def content_fingerprint(value: Any) -> Fingerprint:
    """Fingerprint one value by pickling it (buffers hashed in place, not copied).

    >>> content_fingerprint([1, 2]) == content_fingerprint([1, 2])
    True
    """
    buffers: list[pickle.PickleBuffer] = []
    header = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    hasher = xxhash.xxh3_128(header)
    nbytes = len(header)
    for buffer in buffers:
        raw = buffer.raw()
        hasher.update(raw)
        nbytes += raw.nbytes
    return Fingerprint(hasher.hexdigest(), nbytes, label_of(value))


def is_obviously_small(value: Any, min_bytes: int) -> bool:
    """True for values whose pickle is certainly below ``min_bytes``, judged without pickling.

    >>> is_obviously_small((1, 2.0, "a"), 1024), is_obviously_small("x" * 4096, 1024)
    (True, False)
    """
    typ = type(value)
    if typ in _SCALARS or isinstance(value, _SMALL_KINDS):
        return True
    if isinstance(value, _TEXT):
        # at most 4 bytes a character in UTF-8
        return len(value) * 4 < min_bytes
    if typ is tuple:
        return len(value) <= _SMALL_TUPLE_LEN and all(
            type(v) in _SCALARS or (isinstance(v, str) and len(v) < 64) for v in value
        )
    if typ is np.ndarray:
        return value.dtype != object and value.nbytes * 2 < min_bytes
    return False


_NOT_LETTERS = re.compile("[^A-Za-z]+")


def label_of(value: Any) -> str:
    """A dashboard-friendly name for a value: letters only, words joined by '-'.

    >>> label_of([1]), label_of(label_of), label_of(functools.partial(max, 1))
    ('list', 'function-labelof', 'partial-max')

    dask's ``key_split`` keeps only alphabetic words of a key in the task
    prefix, so digits and punctuation would drop the name from the dashboard.
    """
    words = [type(value).__name__]
    owner = getattr(value, "__self__", None)
    if isinstance(value, types.MethodType) and owner is not None:
        words = [type(owner).__name__, value.__func__.__name__]
    elif isinstance(value, functools.partial):
        words.append(getattr(value.func, "__name__", ""))
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        words.append(value.__name__)
    cleaned = (_NOT_LETTERS.sub("", w) for w in words)
    return "-".join(w for w in cleaned if w) or "object"
