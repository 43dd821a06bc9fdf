"""Which values no task can change: what ``merge-equal: immutable`` lets share one key.

>>> import numpy as np
>>> frozen = np.arange(4); frozen.flags.writeable = False
>>> is_immutable(("a", b"b", 3)), is_immutable(frozen), is_immutable(np.arange(4)), is_immutable([1])
(True, True, False, False)

Two distinct objects with equal pickles may share one hoisted key only if no
task can change what another task sees: otherwise a function that fills a
buffer it was given would write into every other task's buffer too (plain
dask never shares distinct objects, on any scheduler).  The judgement is
conservative: anything not recognised here is mutable.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import numpy as np

# Types whose instances cannot change at all.
_ATOMS: frozenset[type] = frozenset(
    {type(None), bool, int, float, complex, str, bytes, range, slice, type(Ellipsis), type(NotImplemented)}
)
_SEQUENCES = (tuple, frozenset)
# Nesting deeper than this is judged mutable rather than walked (and a cycle ends here).
_MAX_DEPTH = 32


def merge_policy(merge_equal: str) -> Callable[[Any], bool]:
    """The predicate for the ``merge-equal`` setting: may this object share a key with equal others?

    >>> merge_policy("always")([1]), merge_policy("never")(b"x"), merge_policy("immutable")(b"x")
    (True, False, True)
    """
    if merge_equal == "always":
        return _always
    if merge_equal == "never":
        return _never
    return is_immutable


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


def is_immutable(value: Any, depth: int = 0) -> bool:
    """Whether no task holding ``value`` can change what another task holding it sees.

    Immutable: ``None``, numbers, ``str``, ``bytes``, ``range``; tuples and
    frozensets of immutables; numpy scalars and dtypes; numpy arrays that are
    read-only down to their base, without Python objects inside; pandas
    ``Index`` objects of immutable values; pandas ``Series`` and ``DataFrame``
    whose index, columns and every column array are; types and modules
    (pickled by reference, so equal pickles are the same object anyway); plain
    functions without closure, attributes or mutable defaults.
    """
    if depth > _MAX_DEPTH:
        return False
    try:
        kind = _kind(type(value))
    except TypeError:  # a class whose metaclass makes it unhashable
        kind = _kind_of(type(value))
    if kind == "atom":
        return True
    if kind == "sequence":
        return all(is_immutable(item, depth + 1) for item in value)
    if kind == "array":
        return _is_read_only_array(value)
    if kind == "function":
        return _is_pure_function(value, depth)
    if kind == "index":
        return _is_immutable_index(value, depth)
    if kind == "frame":
        return _is_immutable_frame(value, depth)
    return False


@functools.lru_cache(maxsize=1024)
def _kind(typ: type) -> str:
    # cached per type: prescans ask it of every medium object they read
    return _kind_of(typ)


def _kind_of(typ: type) -> str:
    """Which of the checks above applies to instances of ``typ``.

    By the type, not the instance: an object that only claims a class (a
    proxy's ``__class__``) is judged as what it is, and mutable if unknown.
    Compared by identity, as some metaclasses make their classes unhashable.
    """
    if any(typ is atom for atom in _ATOMS) or issubclass(typ, (np.generic, np.dtype, type, types.ModuleType)):
        return "atom"
    if any(typ is sequence for sequence in _SEQUENCES):
        return "sequence"
    if typ is np.ndarray:
        return "array"
    if issubclass(typ, types.FunctionType):
        return "function"
    # pandas is imported only when the value's type comes from it
    module = getattr(typ, "__module__", None)
    if isinstance(module, str) and module.startswith("pandas"):
        import pandas as pd

        if issubclass(typ, pd.Index):
            return "index"
        if issubclass(typ, (pd.Series, pd.DataFrame)):
            return "frame"
    return "other"


def _is_read_only_array(array: np.ndarray) -> bool:
    # an object array's elements are Python objects that a task can change in place
    if array.dtype.hasobject:
        return False
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    if base is None or isinstance(base, bytes):
        return True
    try:
        with memoryview(base) as view:  # an mmap, a foreign buffer: read-only only if it says so
            return view.readonly
    except TypeError:
        return False


def _is_pure_function(func: types.FunctionType, depth: int) -> bool:
    # a closure cell or a mutable default is state that calls share
    if func.__closure__ or func.__dict__:
        return False
    defaults = (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values())
    return all(is_immutable(d, depth + 1) for d in defaults)


def _is_immutable_frame(value: Any, depth: int) -> bool:
    # the columns first: writeable ones, the common case, decide at once
    manager = getattr(value, "_mgr", None)
    arrays = getattr(manager, "arrays", None)
    if arrays is None:
        return False
    for array in arrays:
        if not _is_read_only_column(array):
            return False
    if value.attrs:  # a dict any task can fill
        return False
    indexes = [value.index] + ([value.columns] if value.ndim == 2 else [])
    return all(_is_immutable_index(index, depth) for index in indexes)


def _is_immutable_index(index: Any, depth: int) -> bool:
    # an Index has no setitem; only the Python objects an object Index holds can change
    if index.dtype == object:
        return all(is_immutable(item, depth + 1) for item in index)
    return True


def _is_read_only_column(array: Any) -> bool:
    if isinstance(array, np.ndarray):
        return _is_read_only_array(array)
    # datetime, timedelta and period extension arrays wrap one ndarray; other
    # extension arrays (arrow, masked, categorical) can be written through setitem
    inner = getattr(array, "_ndarray", None)
    return isinstance(inner, np.ndarray) and _is_read_only_array(inner) and type(array).__module__.startswith("pandas")
