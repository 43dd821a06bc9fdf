"""A graph pickled without the large objects its scheduler keeps, and put together again there.

>>> from dedupgraph.core.plan import hoisted_key
>>> table = np.arange(1_000_000)
>>> kept = hoisted_key(content_fingerprint(table))
>>> pickled = pickle_sparing({"x": ("add", table, 1), "y": ("add", table, 2)}, {("ndarray", outline(table)): {kept}})
>>> list(pickled.spared) == [kept], pickled.nbytes < 1_000
(True, True)
>>> restored = unpickle_restoring(pickled.payload, pickled.buffers, {kept: table})
>>> restored["x"][1] is restored["y"][1] is table
True

A later computation with the same large object need not send it: the
scheduler keeps it (``dedupgraph.routes.distributed.reuse``).  When the
client has been told which objects its scheduler keeps (:class:`Offer`, by
type name, :func:`outline` and content key, ``dedup-<type>-<digest>``), it
pickles the expression itself (:func:`pickle_sparing`): each object of a
kept type and outline is fingerprinted as the pass does, and an object whose content key the
scheduler keeps is written as that key alone, a *persistent id* in pickle's
terms.  The scheduler unpickles the graph with the kept objects put back
where they were (:func:`restore`), and the pass finds the same contents as
if they had travelled: the same keys, which the scheduler holds already.

Only the first object (by identity) with a given content is left out: an
equal copy that is a distinct object travels as it is, so that the graph's
identities, which ``merge-equal`` reads, are the ones the client built.
Objects pickled smaller than :data:`SPARE_MIN_BYTES` are never offered:
fingerprinting them on the client would cost more than they save.

The client reserves what it left out before it sends the graph (the
plugin's ``reserve``): the scheduler holds each reserved object for that one
graph, so that an object the scheduler lets go of in between (the limit, a
closing client, ``dedupgraph.forget``) is still there to put back; the
object then travels from the scheduler to a worker again, as in the first
computation.  Nothing the client left out is ever missing.
"""

from __future__ import annotations

import io
import logging
import pickle
import sys
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np

from dedupgraph.core.fingerprint import content_fingerprint
from dedupgraph.routes.distributed.hook import current_handler

logger = logging.getLogger("dedupgraph")

#: the smallest kept object a scheduler offers its clients to leave out
SPARE_MIN_BYTES = 2**20
#: the ``op`` of the scheduler's message telling a client what it keeps
OFFER_OP = "dedupgraph-kept"
#: the scheduler handler that reserves kept objects for one graph
RESERVE_OP = "dedupgraph_reserve"

#: (type name, outline) -> content keys of the objects of that description the scheduler keeps
Kept = Mapping[tuple[str, str], Set[str]]


def outline(obj: Any) -> str:
    """A description of ``obj`` that equal contents share, told without pickling it: its length or shape.

    >>> import pandas as pd
    >>> outline({"a": 1}), outline(np.zeros((3, 2))), outline(pd.Series([1, 2])), outline(object())
    ('len 1', '(3, 2) float64', '(2,)', '')

    The client fingerprints only the objects whose type name and outline
    match a kept object's: a graph that carries thousands of small dicts,
    when the kept object is a large dict, pickles none of them twice.
    Objects of other types have an empty outline (the type name alone).
    """
    typ = type(obj)
    if typ in _SIZED:
        return f"len {len(obj)}"
    if typ is np.ndarray:
        return f"{obj.shape} {obj.dtype}"
    # pandas only if something imported it already: a worker imports this module with
    # dedupgraph, and must not pay for pandas (a pandas object implies it is imported)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(obj, (pd.Series, pd.DataFrame, pd.Index)):
        return str(obj.shape)
    return ""


_SIZED = (dict, list, set, frozenset, tuple, str, bytes, bytearray)


@dataclass
class Offer:
    """What one client was last told its scheduler keeps; replaced whole, so threads read it safely.

    >>> offer = Offer()
    >>> offer.told([["ndarray", "(1000,) int64", "dedup-ndarray-aa"], ["Mapper", "", "dedup-Mapper-bb"]])
    >>> offer.kept
    {('ndarray', '(1000,) int64'): {'dedup-ndarray-aa'}, ('Mapper', ''): {'dedup-Mapper-bb'}}
    >>> offer.missing({"dedup-Mapper-bb"})  # the scheduler no longer had it
    >>> offer.kept
    {('ndarray', '(1000,) int64'): {'dedup-ndarray-aa'}}
    """

    kept: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def told(self, objects: list[list[str]]) -> None:
        """The scheduler's message: ``[type name, outline, content key]`` per kept object."""
        kept: dict[tuple[str, str], set[str]] = {}
        for name, shape, key in objects:
            kept.setdefault((name, shape), set()).add(key)
        self.kept = kept

    def missing(self, keys: Set[str]) -> None:
        """The scheduler answered that it no longer keeps ``keys``."""
        self.kept = {described: left for described, kept in self.kept.items() if (left := kept - keys)}


@dataclass
class Pickled:
    """An expression pickled by :func:`pickle_sparing`: what to send instead of it."""

    payload: bytes
    buffers: list[pickle.PickleBuffer]
    spared: set[str]  #: the content keys of the objects left out

    @property
    def nbytes(self) -> int:
        """The bytes that travel: the payload and its out-of-band buffers."""
        return len(self.payload) + sum(b.raw().nbytes for b in self.buffers)


def pickle_sparing(obj: Any, kept: Kept) -> Pickled:
    """Pickle ``obj`` as distributed would (cloudpickle, protocol 5), each kept object as its content key."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    pickler = _SparingPickler(out, kept, buffers.append)
    pickler.dump(obj)
    return Pickled(out.getvalue(), buffers, pickler.spared)


class _SparingPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, kept: Kept, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        # here, not at the top: importing dedupgraph must not import the pass's modules, which
        # need dask internals that dedupgraph.compat checks first (the client imports this module)
        from dedupgraph.core.plan import hoisted_key

        self._hoisted_key = hoisted_key
        self._kept = kept
        self._names = {name for name, _ in kept}
        self._types: dict[int, bool] = {}  # id of a type -> whether objects of it may be kept ones
        self._seen: dict[int, tuple[Any, str | None]] = {}  # id -> (object, its persistent id)
        self.spared: set[str] = set()

    def persistent_id(self, obj: Any) -> str | None:  # called for every object pickled: kept cheap
        typ = type(obj)
        candidate = self._types.get(id(typ))
        if candidate is None:
            candidate = self._types[id(typ)] = typ.__name__ in self._names
        if not candidate:
            return None
        seen = self._seen.get(id(obj))
        if seen is not None:
            return seen[1]
        pid = None
        keys = self._kept.get((typ.__name__, outline(obj)))
        if keys:
            try:
                key = self._hoisted_key(content_fingerprint(obj))
            except Exception:  # noqa: BLE001  (pickled below as usual, and fails there if it must)
                key = None
            # only kept objects of SPARE_MIN_BYTES or more are offered: a key found is one of them
            if key in keys and key not in self.spared:
                pid = key
                self.spared.add(key)
        self._seen[id(obj)] = (obj, pid)  # the object held: its id stays its own
        return pid


@dataclass(frozen=True)
class Prepickled:
    """Sent instead of an expression; unpickled on the scheduler as the expression, kept objects put back.

    ``token``: the reservation of the objects left out (None: none were).
    """

    token: str | None
    pickled: Pickled

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the payload out of band too: distributed frames it without a copy
        buffers = [pickle.PickleBuffer(self.pickled.payload), *self.pickled.buffers]
        return restore, (self.token, buffers)


def restore(token: str | None, buffers: list[Any]) -> Any:
    """Runs on the scheduler as it unpickles a graph: the expression, with the reserved objects put back.

    The reservation is the scheduler's own: its route's handler for this
    graph (``dedupgraph.routes.distributed.hook.current_handler``) gives it.
    """
    if token is None:
        return unpickle_restoring(buffers[0], buffers[1:], {})
    reserved = getattr(current_handler(), "reserved", None)
    values = reserved(token) if callable(reserved) else None
    if values is None:
        raise RuntimeError(
            "dedupgraph: this graph leaves out objects the scheduler kept for it, but this scheduler "
            f"holds no reservation {token!r} (did the client reconnect to another scheduler between "
            "reserving and sending?). Compute again: the objects will travel."
        )
    return unpickle_restoring(buffers[0], buffers[1:], values)


def unpickle_restoring(payload: Any, buffers: list[Any], values: Mapping[str, Any]) -> Any:
    """Unpickle what :func:`pickle_sparing` wrote, each content key replaced by ``values[key]``."""
    return _RestoringUnpickler(io.BytesIO(payload), buffers, values).load()


class _RestoringUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[Any], values: Mapping[str, Any]) -> None:
        super().__init__(file, buffers=buffers)
        self._values = values

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self._values[pid]
        except KeyError:
            raise pickle.UnpicklingError(f"dedupgraph: no object reserved under {pid!r}") from None
