"""Deduplicate collections now, in this process: ``dask.optimize`` with the pass in between.

>>> import dask, dedupgraph
>>> table = bytes(range(256)) * 400  # 100 KiB, carried by each task
>>> counts = [dask.delayed(bytes.count)(table, i) for i in range(3)]
>>> (deduped,) = dedupgraph.deduplicate(counts, client=False)
>>> sorted({str(k)[:12] for d in deduped for k in dict(d.dask) if str(k).startswith("dedup-")})
['dedup-bytes-']
>>> dask.compute(*deduped, scheduler="sync")
(400, 400, 400)

With a distributed client (passed, or the default one) each hoisted object is
scattered once under its content key, and the tasks reference the future.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dask.base import unpack_collections
from dask.core import flatten

from dedupgraph.compat import MISSING_INTERNALS
from dedupgraph.core.layers import annotated
from dedupgraph.core.pipeline import Graph, planned
from dedupgraph.routes.materialize import is_dataframe_like, materialize, resolve_client
from dedupgraph.placement import holding_layer, in_graph, layer_refs, scattered
from dedupgraph.settings import Settings

if TYPE_CHECKING:
    from dask._task_spec import GraphNode
    from distributed import Client


def deduplicate(
    *args: Any,
    client: Client | bool | None = None,
    broadcast: bool = False,
    traverse: bool = True,
    **settings: Any,
) -> tuple[Any, ...]:
    """Equivalent collections whose repeated large objects are hoisted, like ``dask.optimize``.

    >>> arr2, df2 = deduplicate(arr, df, client=client, broadcast=True)  # doctest: +SKIP

    The graphs of all ``args`` are optimized and materialized together, in
    this process, by each collection's own optimizer (if that is one of
    dedupgraph's passes, by the optimizer it wraps: the pass runs here, once,
    on the whole graph), and each collection is rebuilt from its part.  Arguments that are not
    collections come back unchanged; ``traverse`` looks into lists, tuples and
    dicts, as in ``dask.optimize``.  When nothing is hoisted (or in a dry run),
    every argument comes back as it was.

    ``client``: a distributed ``Client`` to scatter hoisted objects to; None
    (the default) uses the default client if there is one; ``False`` never
    scatters and hoists into graph keys, as the optimization pass does.
    ``broadcast``: scatter to every worker.  ``settings`` as for ``enable``.
    """
    collections, repack = unpack_collections(*args, traverse=traverse)
    if not collections:
        return args
    chosen = Settings.from_config(**settings)
    if MISSING_INTERNALS:  # the stages cannot run on this dask (see dedupgraph.compat)
        warnings.warn(
            f"dedupgraph.deduplicate left the collections as they are: this dask lacks {', '.join(MISSING_INTERNALS)}",
            RuntimeWarning,
            stacklevel=2,
        )
        return args
    target = resolve_client(client)
    # as the collections will run: a Client's compute and persist do not fuse
    # dask-expr graphs, a local compute does
    done = materialize(collections, fuse=target is None)
    graph = done.graph
    parts = [
        _expr_part(coll, done.optimized[i]) if i in done.optimized else _legacy_part(coll, done.annotations)
        for i, coll in enumerate(collections)
    ]
    forms = {p.is_expr for p in parts}  # rewrite only the forms some part is rebuilt from
    rewritten = _deduplicated(graph, chosen, target, broadcast, legacy=False in forms, exprs=True in forms)
    if rewritten is None:
        # rebuilt from a materialized graph, a collection costs more to submit
        # (a DataFrame: one alias task per partition); unchanged, it costs nothing
        return args
    rewritten.shared = _shared_keys(rewritten.for_exprs, [p.keys for p in parts if p.is_expr])
    return repack([part.rebuild(rewritten) for part in parts])


@dataclass
class Rewritten:
    """The deduplicated graph, in the two forms that collections are rebuilt from.

    With scattered objects, the tasks of array, bag and delayed graphs hold a
    ``ScatteredRef`` each; dask-expr graphs reference the keys by plain
    ``TaskRef`` and their layers hold ``holds`` (see ``dedupgraph.placement.holding_layer``).
    """

    for_legacy: Graph
    for_exprs: Graph
    #: scattered key -> a reference that holds its future
    holds: dict[Hashable, Any] = field(default_factory=dict)
    #: whether the scheduler can read dedupgraph's own expressions (see ``frames``)
    renamable: bool = False
    #: keys that the parts of more than one dask-expr collection need
    shared: frozenset[Hashable] = frozenset()


def _deduplicated(
    graph: Graph, settings: Settings, client: Client | None, broadcast: bool, *, legacy: bool, exprs: bool
) -> Rewritten | None:
    """The graph with its hoisted objects referenced; None if nothing is hoisted (or a dry run).

    ``legacy``, ``exprs``: whether array/bag/delayed or dask-expr collections
    are rebuilt from it; a form none of them needs stays empty.
    """
    from dedupgraph.core.rewrite import rewrite_graph

    candidates, plan = planned(graph, settings, source="deduplicate: ")
    if not plan or settings.dry_run:
        return None
    check = settings.check_mutation
    if client is None:
        out = rewrite_graph(graph, plan, candidates, place=in_graph(settings), check_mutation=check)
        return Rewritten(out, out)
    from dedupgraph.routes.distributed.client import scheduler_imports_dedupgraph

    done = scattered(client, plan.hoists, settings, broadcast)
    # The run_spec that turns a lost scattered object into a clear error is a
    # dedupgraph function: only where the scheduler can unpickle it.
    lost = done.lost_tasks(broadcast) if scheduler_imports_dedupgraph(client) else {}
    holding: Graph = {}
    referring: Graph = {}
    shared = done.read_only()
    if legacy:
        references = done.references(holding=True)
        holding = {**rewrite_graph(graph, plan, candidates, references=references, check_mutation=check, read_only=shared), **lost}
    if exprs:
        references = done.references(holding=False)
        referring = {**rewrite_graph(graph, plan, candidates, references=references, check_mutation=check, read_only=shared), **lost}
    return Rewritten(holding, referring, {ref.key: ref for ref in done.refs.values()}, renamable=bool(lost))


# --- rebuild from the one graph materialized for all, as dask.optimize does


@dataclass(frozen=True)
class Part:
    """One collection: its output keys, and how to rebuild it from the rewritten graph."""

    keys: list[Hashable]
    rebuild: Callable[[Rewritten], Any]
    is_expr: bool


def _legacy_part(coll: Any, annotations: Mapping[str, Mapping[Hashable, Any]]) -> Part:
    keys = list(flatten(coll.__dask_keys__()))
    rebuild, extra = coll.__dask_postpersist__()
    # a rebuilt collection's graph must hold a layer of the name the collection gives its own
    name = str(coll.__dask_layers__()[0])

    def rebuilt(done: Rewritten) -> Any:
        return rebuild(annotated(culled(done.for_legacy, keys), annotations, keys, name), *extra)

    return Part(keys, rebuilt, is_expr=False)


def _expr_part(coll: Any, optimized: Any) -> Part:
    from dask._collections import new_collection
    from dask.utils import key_split

    keys = list(flatten(optimized.__dask_keys__()))
    # deduplicating again must keep holding what the input held
    inherited = _held_refs(optimized)
    if not is_dataframe_like(coll):
        rebuild, extra = new_collection(optimized).__dask_postpersist__()
        return Part(keys, lambda done: rebuild(_holding(done, culled(done.for_exprs, keys), inherited), *extra), True)
    meta, divisions, prefix = optimized._meta, optimized.divisions, key_split(optimized._name)

    def rebuild_frame(done: Rewritten) -> Any:
        layer = culled(done.for_exprs, keys)
        if done.renamable and done.shared.isdisjoint(keys):
            from dedupgraph.routes.frames import renamed_frame

            token = (optimized._name, sorted(done.holds, key=str))
            return renamed_frame(layer, meta, divisions, keys, prefix, token, lambda g: _holding(done, g, inherited))
        # FrameBase.__dask_postpersist__ takes its keys from the graph it is given
        # (all of them for a whole graph): pass the output keys explicitly
        from dask.dataframe import from_graph

        return from_graph(_holding(done, layer, inherited), meta, divisions, keys, prefix)

    return Part(keys, rebuild_frame, True)


def _holding(done: Rewritten, layer: Graph, inherited: Mapping[Hashable, Any]) -> Mapping[Hashable, GraphNode]:
    """``layer``, holding the futures its tasks reference (see ``dedupgraph.placement.holding_layer``)."""
    holds = {**inherited, **done.holds}
    if not holds:
        return layer
    used = {dep for node in layer.values() for dep in node.dependencies if dep in holds}
    return holding_layer(layer, (holds[key] for key in sorted(used, key=str)))


def _shared_keys(graph: Graph, outputs: list[list[Hashable]]) -> frozenset[Hashable]:
    """Keys in the parts of ``graph`` that more than one of the ``outputs`` lists need."""
    seen: set[Hashable] = set()
    shared: set[Hashable] = set()
    for keys in outputs:
        part = culled(graph, keys)
        shared.update(seen.intersection(part))
        seen.update(part)
    return frozenset(shared)


def _held_refs(expr: Any) -> dict[Hashable, Any]:
    """References held by the layers of an expression built on deduplicated collections."""
    return {ref.key: ref for sub in expr.walk() for operand in sub.operands for ref in layer_refs(operand)}


def culled(graph: Mapping[Hashable, GraphNode], keys: Iterable[Hashable]) -> Graph:
    """The part of ``graph`` that ``keys`` need; references outside it (futures) stay references.

    >>> from dask._task_spec import Task, TaskRef
    >>> g = {"a": Task("a", max, 1, 2), "b": Task("b", max, TaskRef("a"), 0), "c": Task("c", min, 0, 1)}
    >>> sorted(culled(g, ["b"]))
    ['a', 'b']
    """
    out: Graph = {}
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in out or key not in graph:
            continue
        node = out[key] = graph[key]
        stack.extend(node.dependencies)
    return out
