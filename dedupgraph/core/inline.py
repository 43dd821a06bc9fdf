"""Opt out per object: ``keep_inline(obj)`` and every task keeps its own copy.

>>> import dedupgraph
>>> class Model:
...     pass
>>> model = dedupgraph.keep_inline(Model())
>>> is_kept_inline(model)
True

For functions that mutate their argument: once hoisted, one object is shared by
every task on a worker (or in a local scheduler's process).  To opt out a whole
type, name it in the ``dedupgraph.exclude`` setting instead.
"""

from __future__ import annotations

from typing import TypeVar

from dedupgraph.core.fingerprint import KEEP_INLINE_ATTR, is_kept_inline

T = TypeVar("T")


class InlineDict(dict):  # type: ignore[type-arg]
    """A ``dict`` the pass never hoists (``keep_inline`` of a plain dict)."""

    __dedupgraph_keep_inline__ = True


class InlineList(list):  # type: ignore[type-arg]
    """A ``list`` the pass never hoists (``keep_inline`` of a plain list)."""

    __dedupgraph_keep_inline__ = True


_MARKED_COPIES: dict[type, type] = {dict: InlineDict, list: InlineList}


def keep_inline(obj: T) -> T:
    """``obj``, marked so the pass leaves it inline in every task that carries it.

    >>> keep_inline({"a": 1})
    {'a': 1}

    Objects that pickle their ``__dict__`` get an attribute, so the mark travels
    with them to a distributed scheduler.  A plain ``dict`` or ``list`` comes back
    as a marked copy (a subclass) that must be used in its place.  Anything else
    (numpy arrays, pandas objects, objects with custom pickling) raises
    ``TypeError``: exclude its type with the ``dedupgraph.exclude`` setting.
    """
    copy_type = _MARKED_COPIES.get(type(obj))
    if copy_type is not None:
        return copy_type(obj)  # type: ignore[no-any-return]
    if not _pickles_its_dict(type(obj)):
        raise TypeError(
            f"dedupgraph.keep_inline cannot mark a {type(obj).__module__}.{type(obj).__qualname__}: "
            "the mark would not survive pickling. Add the type to the "
            f"'dedupgraph.exclude' setting instead, e.g. "
            f"dedupgraph.enable(exclude=['{type(obj).__module__}.{type(obj).__qualname__}'])"
        )
    object.__setattr__(obj, KEEP_INLINE_ATTR, True)
    return obj


def _pickles_its_dict(typ: type) -> bool:
    """Whether instances pickle by the default protocol, which includes ``__dict__``."""
    if not hasattr(typ, "__dict__") or "__dict__" not in dir(typ):
        return False
    default_getstate = getattr(object, "__getstate__", None)
    return (
        typ.__reduce_ex__ is object.__reduce_ex__
        and typ.__reduce__ is object.__reduce__
        and getattr(typ, "__getstate__", None) is default_getstate
        and not hasattr(typ, "__slots__")
    )
