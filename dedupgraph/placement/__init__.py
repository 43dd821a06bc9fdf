"""Placement: where a hoisted object lives. In the graph, scattered to a cluster, or in shared memory.

>>> from dedupgraph.placement import in_graph
>>> from dedupgraph.settings import Settings
>>> in_graph(Settings()) is None  # share="process": plain data under the hoisted key
True
>>> in_graph(Settings(share="host")) is not None  # its large buffers in shared memory
True

The routes call one of two functions here, and nothing else of this package
(the tools also ask :func:`shared_memory` what this process maps):

- :func:`in_graph` gives the pass its ``place`` argument: None puts the
  object itself under the hoisted key; with ``share="host"`` the key holds a
  small handle to a shared-memory segment (:mod:`dedupgraph.placement.host`,
  its segments in :mod:`dedupgraph.placement.segments`).
- :func:`scattered` sends the hoisted objects to a cluster once per content,
  for ``dedupgraph.deduplicate(..., client=...)``
  (:mod:`dedupgraph.placement.scatter`), and tells the tasks how to reference
  them; :func:`holding_layer` and :func:`layer_refs` keep the futures alive
  as long as a dask-expr collection that needs them.

Functions of these modules are pickled into graphs by reference: clients,
schedulers and workers must run the same dedupgraph (see ``docs/how-it-works.rst``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dedupgraph.settings import Settings

if TYPE_CHECKING:  # the modules import dask internals that a dask may lack (see dedupgraph.compat)
    from dask._task_spec import GraphNode
    from distributed import Client

    from dedupgraph.core.plan import Hoist
    from dedupgraph.core.rewrite import Place
    from dedupgraph.placement.segments import Mapped


def in_graph(settings: Settings) -> Place | None:
    """``place`` for :func:`dedupgraph.core.pipeline.deduplicate_graph` under ``settings``."""
    if settings.share != "host":
        return None
    # imported only here: shared-memory code (and its serializers) load when first asked for
    from dedupgraph.placement.host import placement

    return placement(settings)


def shared_memory() -> Mapped:
    """The shared-memory segments this process maps now and created (``share="host"``), for ``/metrics``.

    >>> shared_memory().segments >= 0
    True
    """
    from dedupgraph.placement.segments import mapped

    return mapped()


def host_segment_bytes() -> int:
    """Bytes of dedupgraph's segments on this host now, every process's: each counted once.

    >>> host_segment_bytes() >= 0
    True
    """
    from dedupgraph.placement.segments import segment_dir, usage

    directory = segment_dir()
    return usage(directory) if directory is not None else 0


@dataclass(frozen=True)
class Scattered:
    """Hoisted objects scattered to a cluster: what the tasks reference, and what keeps the data alive."""

    #: digest -> the hoist as scattered (with ``share="host"``, a handle under its host key)
    hoists: dict[str, Hoist]
    #: digest -> a reference that holds the scattered key's future
    refs: dict[str, Any]
    #: whether some of ``hoists`` may be handles to shared memory (``share="host"``)
    per_host: bool = False

    def references(self, holding: bool) -> dict[str, GraphNode]:
        """digest -> what a carrying task holds: the future-holding references, or plain ``TaskRef``s.

        Array, bag and delayed graphs are copied with their tasks, which hold
        the futures; dask-expr graphs hold them in their layer instead.
        """
        from dask._task_spec import TaskRef

        refs: dict[str, Any] = self.refs if holding else {d: TaskRef(r.key) for d, r in self.refs.items()}
        if not self.per_host:
            return refs
        from dedupgraph.placement.host import references

        return references(refs, self.hoists)

    def read_only(self) -> frozenset[str]:
        """The digests of the hoists that tasks receive from shared memory, read-only (``share="host"``)."""
        if not self.per_host:
            return frozenset()
        from dedupgraph.placement.host import HostShared

        return frozenset(d for d, hoist in self.hoists.items() if isinstance(hoist.value, HostShared))

    def lost_tasks(self, broadcast: bool) -> dict[Any, GraphNode]:
        """The graph entries that turn the loss of a scattered object into a clear error (see ``scatter.lost``)."""
        from dedupgraph.placement.scatter import lost_object_task

        return {h.key: lost_object_task(h, broadcast) for h in self.hoists.values()}


def scattered(client: Client, hoists: Mapping[str, Hoist], settings: Settings, broadcast: bool) -> Scattered:
    """``hoists`` scattered to ``client``'s cluster under their content keys, reusing keys it holds."""
    from dedupgraph.placement.scatter import scattered_references

    per_host = settings.share == "host"  # large buffers in shared memory, once per host
    if per_host:
        from dedupgraph.placement.host import scattered_hoists

        # qualifying objects are scattered as HostShared under their host key
        hoists = scattered_hoists(hoists, settings)
    return Scattered(dict(hoists), scattered_references(client, hoists, broadcast), per_host)


def holding_layer(layer: Mapping[Any, Any], refs: Iterable[Any]) -> Mapping[Any, Any]:
    """``layer`` as a dask-expr layer operand that also holds the futures ``refs`` (see ``scatter.HoldingLayer``)."""
    from dedupgraph.placement.scatter import HoldingLayer

    return HoldingLayer(layer, refs=tuple(refs))


def layer_refs(operand: Any) -> tuple[Any, ...]:
    """The future-holding references that a layer operand made by :func:`holding_layer` holds; () for anything else.

    >>> layer_refs({"a": 1})
    ()
    """
    module = sys.modules.get("dedupgraph.placement.scatter")  # only an imported module can have made one
    return operand.refs if module is not None and isinstance(operand, module.HoldingLayer) else ()
