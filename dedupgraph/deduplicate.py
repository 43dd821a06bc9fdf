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
from dedupgraph.layers import annotated, layer_annotations
from dedupgraph.optimizer import Deduplicator, planned, task_graph
from dedupgraph.settings import Settings

if TYPE_CHECKING:
    from dask._task_spec import GraphNode
    from distributed import Client

    Graph = dict[Hashable, GraphNode]


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
    target = _resolve_client(client)
    # as the collections will run: a Client's compute and persist do not fuse
    # dask-expr graphs, a local compute does
    graph, parts = materialize(collections, fuse=target is None)
    forms = {p.is_expr for p in parts}  # rewrite only the forms some part is rebuilt from
    rewritten = _deduplicated(graph, chosen, target, broadcast, legacy=False in forms, exprs=True in forms)
    if rewritten is None:
        # rebuilt from a materialized graph, a collection costs more to submit
        # (a DataFrame: one alias task per partition); unchanged, it costs nothing
        return args
    rewritten.shared = _shared_keys(rewritten.for_exprs, [p.keys for p in parts if p.is_expr])
    return repack([part.rebuild(rewritten) for part in parts])


def _resolve_client(client: Client | bool | None) -> Client | None:
    if client is False:
        return None
    if client is True or client is None:
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            if client is True:
                raise ValueError("deduplicate(client=True) needs a default distributed Client") from None
            return None
    if getattr(client, "asynchronous", False):
        raise ValueError("deduplicate needs a synchronous Client (asynchronous=False)")
    return client


@dataclass
class Rewritten:
    """The deduplicated graph, in the two forms that collections are rebuilt from.

    With scattered objects, the tasks of array, bag and delayed graphs hold a
    ``ScatteredRef`` each; dask-expr graphs reference the keys by plain
    ``TaskRef`` and their layers hold ``holds`` (see ``scatter.HoldingLayer``).
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
    from dask._task_spec import TaskRef

    from dedupgraph.rewrite import rewrite_graph

    candidates, plan = planned(graph, settings, source="deduplicate: ")
    if not plan or settings.dry_run:
        return None
    host = None
    if settings.share == "host":  # large buffers in shared memory, once per host
        from dedupgraph import host_share as host
    if client is None:
        out = rewrite_graph(graph, plan, candidates, place=host.placement(settings) if host else None)
        return Rewritten(out, out)
    from dedupgraph.preload import scheduler_imports_dedupgraph
    from dedupgraph.scatter import lost_object_task, scattered_references

    # with share="host", qualifying objects are scattered as HostShared under their host key
    hoists = host.scattered_hoists(plan.hoists, settings) if host else plan.hoists
    refs = scattered_references(client, hoists, broadcast)
    # The run_spec that turns a lost scattered object into a clear error is a
    # dedupgraph function: only where the scheduler can unpickle it.
    lost = {}
    if scheduler_imports_dedupgraph(client):
        lost = {h.key: lost_object_task(h, broadcast) for h in hoists.values()}
    holding: Graph = {}
    referring: Graph = {}
    if legacy:
        held = host.references(refs, hoists) if host else refs
        holding = {**rewrite_graph(graph, plan, candidates, references=held), **lost}
    if exprs:
        plain = {digest: TaskRef(ref.key) for digest, ref in refs.items()}
        plain = host.references(plain, hoists) if host else plain
        referring = {**rewrite_graph(graph, plan, candidates, references=plain), **lost}
    return Rewritten(holding, referring, {ref.key: ref for ref in refs.values()}, renamable=bool(lost))


# --- materialize, then rebuild: how dask.optimize does it, one graph for all


@dataclass(frozen=True)
class Part:
    """One collection: its output keys, and how to rebuild it from the rewritten graph."""

    keys: list[Hashable]
    rebuild: Callable[[Rewritten], Any]
    is_expr: bool


def materialize(collections: list[Any], fuse: bool = True) -> tuple[Graph, list[Part]]:
    """One optimized graph for all ``collections``, and per collection a :class:`Part` of it.

    The graph is what computing them would run, before the pass: each
    collection's own optimization (culling, fusion), the pass itself excepted.
    ``fuse``: whether dask-expr DataFrames are fused, as a local ``compute``
    does (a distributed Client's ``compute`` and ``persist`` do not).
    """
    from dask._expr import Expr

    graph: dict[Hashable, Any] = {}
    parts: list[Part] = []
    legacy = [c for c in collections if not isinstance(getattr(c, "expr", None), Expr)]
    annotations: dict[str, dict[Hashable, Any]] = {}
    if legacy:
        legacy_graph, annotations = _legacy_graph(legacy)
        graph.update(legacy_graph)
    for coll in collections:
        if isinstance(getattr(coll, "expr", None), Expr):
            # array-expr arrays have one way to optimize; DataFrames fuse or not
            # (dask-expr ignores annotations: there are none to keep)
            optimized = coll.expr.optimize(fuse=fuse) if _is_dataframe_like(coll) else coll.expr.optimize()
            graph.update(optimized.__dask_graph__())
            parts.append(_expr_part(coll, optimized))
        else:
            parts.append(_legacy_part(coll, annotations))
    return task_graph(graph), parts


def _legacy_graph(collections: list[Any]) -> tuple[Mapping[Hashable, Any], dict[str, dict[Hashable, Any]]]:
    """Arrays, bags, delayed: their low-level optimizers, our pass excepted (we run it after).

    Also the annotations that computing them would give each key.
    """
    from dask._expr import HLGExpr, _ExprSequence
    from dask.delayed import Delayed

    graph: dict[Hashable, Any] = {}
    exprs = []
    delayed_by_optimizer: dict[int, tuple[Any, list[Any]]] = {}
    for coll in collections:
        if isinstance(coll, Delayed):
            optimizer = _without_pass(coll.__dask_optimize__)
            delayed_by_optimizer.setdefault(id(optimizer), (optimizer, []))[1].append(coll)
            continue
        expr = HLGExpr.from_collection(coll)
        base = _without_pass(expr.low_level_optimizer)
        if base is not expr.low_level_optimizer:
            expr = expr.substitute_parameters({"low_level_optimizer": base})
        exprs.append(expr)
    annotations: dict[str, dict[Hashable, Any]] = {}
    for optimizer, group in delayed_by_optimizer.values():
        graph.update(_delayed_graph(optimizer, group))
        for value in group:
            _merge_annotations(annotations, layer_annotations(value.__dask_graph__()))
    if exprs:
        # grouped by optimizer, merged and optimized together, as dask.compute does
        optimized = _ExprSequence(*exprs).optimize()
        graph.update(optimized.__dask_graph__())
        _merge_annotations(annotations, optimized.__dask_annotations__())
    return graph, annotations


def _merge_annotations(into: dict[str, dict[Hashable, Any]], more: Mapping[str, Mapping[Hashable, Any]]) -> None:
    for kind, values in more.items():
        into.setdefault(kind, {}).update(values)


def _without_pass(optimizer: Any) -> Any:
    return optimizer.base if isinstance(optimizer, Deduplicator) else optimizer


def _delayed_graph(optimizer: Any, group: list[Any]) -> Mapping[Hashable, Any]:
    """Many ``Delayed`` values, merged into one flat graph before their optimizer runs.

    dask keeps one graph layer per ``Delayed`` and culls every layer against
    all requested keys: quadratic in their number (3000 values: ~1 s). One
    layer holding them all is culled in one linear walk, to the same tasks.
    """
    from dask.utils import ensure_dict

    merged: dict[Hashable, Any] = {}
    for value in group:
        merged.update(ensure_dict(value.__dask_graph__()))
    keys = [value.key for value in group]
    return merged if optimizer is None else ensure_dict(optimizer(merged, keys))


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
    if not _is_dataframe_like(coll):
        rebuild, extra = new_collection(optimized).__dask_postpersist__()
        return Part(keys, lambda done: rebuild(_holding(done, culled(done.for_exprs, keys), inherited), *extra), True)
    meta, divisions, prefix = optimized._meta, optimized.divisions, key_split(optimized._name)

    def rebuild_frame(done: Rewritten) -> Any:
        layer = culled(done.for_exprs, keys)
        if done.renamable and done.shared.isdisjoint(keys):
            from dedupgraph.frames import renamed_frame

            token = (optimized._name, sorted(done.holds, key=str))
            return renamed_frame(layer, meta, divisions, keys, prefix, token, lambda g: _holding(done, g, inherited))
        # FrameBase.__dask_postpersist__ takes its keys from the graph it is given
        # (all of them for a whole graph): pass the output keys explicitly
        from dask.dataframe import from_graph

        return from_graph(_holding(done, layer, inherited), meta, divisions, keys, prefix)

    return Part(keys, rebuild_frame, True)


def _holding(done: Rewritten, layer: Graph, inherited: Mapping[Hashable, Any]) -> Mapping[Hashable, GraphNode]:
    """``layer``, holding the futures its tasks reference (see ``scatter.HoldingLayer``)."""
    holds = {**inherited, **done.holds}
    if not holds:
        return layer
    from dedupgraph.scatter import HoldingLayer

    used = {dep for node in layer.values() for dep in node.dependencies if dep in holds}
    return HoldingLayer(layer, refs=tuple(holds[key] for key in sorted(used, key=str)))


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
    from dedupgraph.scatter import HoldingLayer

    return {
        ref.key: ref
        for sub in expr.walk()
        for operand in sub.operands
        if isinstance(operand, HoldingLayer)
        for ref in operand.refs
    }


def _is_dataframe_like(coll: Any) -> bool:
    try:
        from dask.dataframe.dask_expr._collection import FrameBase
    except ImportError:  # dask without its dataframe extra
        return False
    return isinstance(coll, FrameBase)


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
