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
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import xxhash

logger = logging.getLogger("dedupgraph")

# By the type's id: some metaclasses make their classes unhashable, and ``in`` would raise.
_SCALARS: frozenset[int] = frozenset(map(id, (type(None), bool, int, float, complex, slice, range, type(Ellipsis))))
_SMALL_KINDS = (np.generic, np.dtype)  # numpy scalars, and dtypes (each dtype is its own class)
_TEXT = (str, bytes, bytearray)
_SMALL_TUPLE_LEN = 8


@dataclass(frozen=True)
class Fingerprint:
    """Content identity of one value: digest of its pickle, its pickled size, a label."""

    digest: str
    nbytes: int
    label: str


# Why a value stays inline without a fingerprint (see FingerprintMemo.why_inline).
SMALL = "small"
EXCLUDED = "excluded"
UNPICKLABLE = "unpicklable"

KEEP_INLINE_ATTR = "__dedupgraph_keep_inline__"


def is_kept_inline(obj: Any) -> bool:
    """Whether ``obj`` carries the ``dedupgraph.keep_inline`` mark."""
    try:
        return getattr(obj, KEEP_INLINE_ATTR, False) is True
    except Exception:  # objects with exotic __getattr__
        return False


def type_is_excluded(typ: type, exclude: frozenset[str]) -> bool:
    """Whether ``typ`` or one of its bases is named in ``exclude`` (``"module.QualName"``).

    >>> type_is_excluded(bool, frozenset({"builtins.int"}))
    True
    """
    return any(f"{t.__module__}.{t.__qualname__}" in exclude for t in typ.__mro__)


def is_excluded(value: Any, exclude: frozenset[str]) -> bool:
    """Whether the settings keep ``value`` inline: its type is excluded, or it is marked."""
    return type_is_excluded(type(value), exclude) or is_kept_inline(value)


class FingerprintMemo:
    """Fingerprints values once each, by identity, for the length of one pass.

    >>> memo = FingerprintMemo(min_bytes=1024)
    >>> memo.fingerprint(3) is None, memo.why_inline(3)  # obviously small: never pickled
    (True, 'small')

    Two distinct objects with the same digest are compared byte for byte before
    they share one: a hash collision gets a digest of its own.  Not shared
    between passes: each pass builds its own memo, so concurrent passes in the
    scheduler's threads never touch each other's state.

    ``judge_exclusions=False`` fingerprints excluded and marked objects too (a
    report shows their size; the pass never sees their fingerprint).
    """

    def __init__(
        self,
        min_bytes: int,
        exclude: frozenset[str] = frozenset(),
        hasher: Callable[[bytes], Any] = xxhash.xxh3_128,
        judge_exclusions: bool = True,
    ) -> None:
        self.min_bytes = min_bytes
        self.exclude = exclude
        self.hasher = hasher
        self.judge_exclusions = judge_exclusions
        self.pickled = 0
        # id -> (value, fingerprint, reason); holding the value keeps its id from being reused
        self._seen: dict[int, tuple[Any, Fingerprint | None, str | None]] = {}
        # digest -> [(object first seen with it, its pickle once it had to be compared)]
        self._owners: dict[str, list[list[Any]]] = {}
        # id of a type -> whether it is excluded; by id, as some metaclasses make classes
        # unhashable (the values in ``_seen`` keep their types, and so the ids, alive)
        self._excluded_types: dict[int, bool] = {}

    @classmethod
    def for_pass(cls, settings: Any) -> FingerprintMemo:
        """The memo one pass with ``settings`` uses: its smallest size hoisted and ``exclude``.

        A route makes one per graph and hands it to every stage that reads the
        graph (prescan, layers, pass), so that each object is pickled once.
        """
        return cls(settings.smallest_hoisted, frozenset(settings.exclude))

    def fingerprint(self, value: Any) -> Fingerprint | None:
        """The value's fingerprint, or None for small, excluded or unpicklable values."""
        found = self._seen.get(id(value))
        if found is not None:  # first: functions and shared objects recur in every task
            return found[1]
        if is_obviously_small(value, self.min_bytes):
            return None
        reason = EXCLUDED if self.judge_exclusions and self._kept_inline(value) else None
        fp = None if reason else self._pickled_fingerprint(value)
        if fp is None and reason is None:
            reason = UNPICKLABLE
        self._seen[id(value)] = (value, fp, reason)
        return fp

    def seed(self, value: Any, fp: Fingerprint) -> None:
        """Take ``fp`` as ``value``'s fingerprint, known from an earlier pass over this very object.

        >>> memo, table = FingerprintMemo(min_bytes=1024), list(range(10_000))
        >>> memo.seed(table, content_fingerprint(table))
        >>> memo.fingerprint(table) == content_fingerprint(table), memo.pickled
        (True, 0)

        The earlier pass may have had other settings: this memo's exclusions
        judge the value as :meth:`fingerprint` would.

        >>> memo = FingerprintMemo(min_bytes=1024, exclude=frozenset({"builtins.list"}))
        >>> memo.seed(table, content_fingerprint(table))
        >>> memo.fingerprint(table), memo.why_inline(table)
        (None, 'excluded')
        """
        if self.judge_exclusions and self._kept_inline(value):
            self._seen[id(value)] = (value, None, EXCLUDED)
            return
        self._seen[id(value)] = (value, fp, None)
        self._owners.setdefault(fp.digest, []).append([value, None])

    def why_inline(self, value: Any) -> str | None:
        """``SMALL``, ``EXCLUDED`` or ``UNPICKLABLE`` for a value without a fingerprint, else None."""
        if is_obviously_small(value, self.min_bytes):
            return SMALL
        found = self._seen.get(id(value))
        return found[2] if found is not None else None

    def _kept_inline(self, value: Any) -> bool:
        typ = type(value)
        excluded = self._excluded_types.get(id(typ))
        if excluded is None:
            excluded = self._excluded_types[id(typ)] = type_is_excluded(typ, self.exclude)
        if excluded:
            logger.debug("left %s inline: its type is in dedupgraph.exclude", typ.__name__)
            return True
        marked = is_kept_inline(value)
        if marked:
            logger.debug("left %s inline: marked with dedupgraph.keep_inline", typ.__name__)
        return marked

    def _pickled_fingerprint(self, value: Any) -> Fingerprint | None:
        self.pickled += 1
        try:
            parts = pickled_parts(value)
        except Exception as e:  # any failure to pickle just leaves the value inline
            logger.debug(
                "left %s inline: pickling failed (%s: %s)",
                type(value).__name__,
                type(e).__name__,
                e,
            )
            return None
        hasher = self.hasher(parts[0])
        for part in parts[1:]:
            hasher.update(part)
        digest = self._verified_digest(hasher.hexdigest(), value, parts)
        return Fingerprint(digest, sum(memoryview(p).nbytes for p in parts), label_of(value))

    def _verified_digest(self, digest: str, value: Any, parts: list[Any]) -> str:
        """``digest``, or a variant of it if another content already hashed the same."""
        owners = self._owners.setdefault(digest, [])
        for index, owner in enumerate(owners):
            if owner[1] is None:
                try:
                    owner[1] = pickled_parts(owner[0])
                except Exception:  # it pickled before; if not now, it cannot be trusted
                    owner[1] = []
            if same_bytes(owner[1], parts):
                return digest if index == 0 else f"{digest}c{index}"
        owners.append([value, None])
        index = len(owners) - 1
        if index:
            logger.debug("hash collision on %s: kept %s apart", digest, type(value).__name__)
        return digest if index == 0 else f"{digest}c{index}"


def pickled_parts(value: Any) -> list[Any]:
    """The cloudpickle of ``value`` as [header, *out-of-band buffers], buffers not copied."""
    buffers: list[pickle.PickleBuffer] = []
    header = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def same_bytes(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists of byte buffers hold the same bytes end to end."""
    views_a = [memoryview(p).cast("B") for p in a]
    views_b = [memoryview(p).cast("B") for p in b]
    if sum(v.nbytes for v in views_a) != sum(v.nbytes for v in views_b):
        return False
    if len(views_a) == len(views_b):
        return all(x == y for x, y in zip(views_a, views_b))
    return b"".join(views_a) == b"".join(views_b)


def content_fingerprint(value: Any) -> Fingerprint:
    """Fingerprint one value by pickling it (buffers hashed in place, not copied).

    >>> content_fingerprint([1, 2]) == content_fingerprint([1, 2])
    True
    """
    fp = FingerprintMemo(min_bytes=0)._pickled_fingerprint(value)
    if fp is None:
        raise ValueError(f"cannot pickle {type(value).__name__}")
    return fp


def is_obviously_small(value: Any, min_bytes: int) -> bool:
    """True for values whose pickle is certainly below ``min_bytes``, judged without pickling.

    >>> is_obviously_small((1, 2.0, "a"), 1024), is_obviously_small("x" * 4096, 1024)
    (True, False)
    """
    typ = type(value)
    if id(typ) in _SCALARS:
        return True
    if typ is np.ndarray:  # before the isinstance checks: the common medium object
        return not value.dtype.hasobject and value.nbytes * 2 < min_bytes
    if typ is tuple:
        return len(value) <= _SMALL_TUPLE_LEN and all(
            id(type(v)) in _SCALARS or (isinstance(v, str) and len(v) < 64) for v in value
        )
    if typ is bytes or typ is str or isinstance(value, _TEXT):
        # at most 4 bytes a character in UTF-8
        return len(value) * 4 < min_bytes
    return isinstance(value, _SMALL_KINDS)


_NOT_LETTERS = re.compile("[^A-Za-z]+")


def label_of(value: Any) -> str:
    """A dashboard-friendly name for a value: letters only, words joined by '-'.

    >>> label_of([1]), label_of(label_of), label_of(functools.partial(max, 1))
    ('list', 'function-labelof', 'partial-max')

    dask's ``key_split`` keeps only alphabetic words of a key in the task
    prefix, so digits and punctuation would drop the name from the dashboard.
    """
    words = [type(value).__name__]
    if isinstance(value, types.MethodType):  # no getattr on arbitrary objects: __getattr__ may raise
        words = [type(value.__self__).__name__, value.__func__.__name__]
    elif isinstance(value, functools.partial):
        words.append(getattr(value.func, "__name__", ""))
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        words.append(value.__name__)
    cleaned = (_NOT_LETTERS.sub("", w) for w in words)
    return "-".join(w for w in cleaned if w) or "object"
