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
    dicts, as in ``dask.optimize``.

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
    graph, rebuilders = materialize(collections)
    rewritten = _deduplicated(graph, chosen, target, broadcast)
    return repack([rebuild(rewritten) for rebuild in rebuilders])


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


def _deduplicated(graph: Graph, settings: Settings, client: Client | None, broadcast: bool) -> Rewritten:
    from dask._task_spec import TaskRef

    from dedupgraph.rewrite import rewrite_graph

    candidates, plan = planned(graph, settings, source="deduplicate: ")
    if not plan or settings.dry_run:
        return Rewritten(graph, graph)
    if client is None:
        out = rewrite_graph(graph, plan, candidates)
        return Rewritten(out, out)
    from dedupgraph.preload import scheduler_imports_dedupgraph
    from dedupgraph.scatter import lost_object_task, scattered_references

    refs = scattered_references(client, plan.hoists, broadcast)
    # The run_spec that turns a lost scattered object into a clear error is a
    # dedupgraph function: only where the scheduler can unpickle it.
    lost = {}
    if scheduler_imports_dedupgraph(client):
        lost = {h.key: lost_object_task(h, broadcast) for h in plan.hoists.values()}
    holding = {**rewrite_graph(graph, plan, candidates, references=refs), **lost}
    plain = {digest: TaskRef(ref.key) for digest, ref in refs.items()}
    referring = {**rewrite_graph(graph, plan, candidates, references=plain), **lost}
    return Rewritten(holding, referring, {ref.key: ref for ref in refs.values()})


# --- materialize, then rebuild: how dask.optimize does it, one graph for all


Rebuild = Callable[[Rewritten], Any]  # Rewritten -> a collection


def materialize(collections: list[Any]) -> tuple[Graph, list[Rebuild]]:
    """One optimized graph for all ``collections``, and per collection a function of it.

    The graph is what computing them would run, before the pass: each
    collection's own optimization (culling, fusion), the pass itself excepted.
    """
    from dask._expr import Expr

    graph: dict[Hashable, Any] = {}
    rebuilders: list[Rebuild] = []
    legacy = [c for c in collections if not isinstance(getattr(c, "expr", None), Expr)]
    if legacy:
        graph.update(_legacy_graph(legacy))
    for coll in collections:
        if isinstance(getattr(coll, "expr", None), Expr):
            # array-expr and dask-expr: optimized as a lone ``compute`` would
            optimized = coll.expr.optimize()
            graph.update(optimized.__dask_graph__())
            rebuilders.append(_expr_rebuilder(coll, optimized))
        else:
            rebuilders.append(_legacy_rebuilder(coll))
    return task_graph(graph), rebuilders


def _legacy_graph(collections: list[Any]) -> Mapping[Hashable, Any]:
    """Arrays, bags, delayed: their low-level optimizers, our pass excepted (we run it after)."""
    from dask._expr import HLGExpr, _ExprSequence

    exprs = []
    for coll in collections:
        expr = HLGExpr.from_collection(coll)
        optimizer = expr.low_level_optimizer
        if isinstance(optimizer, Deduplicator):
            expr = expr.substitute_parameters({"low_level_optimizer": optimizer.base})
        exprs.append(expr)
    # grouped by optimizer, merged and optimized together, as dask.compute does
    return _ExprSequence(*exprs).optimize().__dask_graph__()


def _legacy_rebuilder(coll: Any) -> Rebuild:
    keys = list(flatten(coll.__dask_keys__()))
    rebuild, extra = coll.__dask_postpersist__()
    return lambda done: rebuild(culled(done.for_legacy, keys), *extra)


def _expr_rebuilder(coll: Any, optimized: Any) -> Rebuild:
    from dask._collections import new_collection
    from dask.utils import key_split

    keys = list(flatten(optimized.__dask_keys__()))
    # deduplicating again must keep holding what the input held
    inherited = _held_refs(optimized)
    if _is_dataframe_like(coll):
        # FrameBase.__dask_postpersist__ takes its keys from the graph it is given
        # (all of them for a whole graph): pass the output keys explicitly
        from dask.dataframe import from_graph

        meta, divisions, prefix = optimized._meta, optimized.divisions, key_split(optimized._name)
        return lambda done: from_graph(_layer(done, keys, inherited), meta, divisions, keys, prefix)
    rebuild, extra = new_collection(optimized).__dask_postpersist__()
    return lambda done: rebuild(_layer(done, keys, inherited), *extra)


def _layer(done: Rewritten, keys: list[Hashable], inherited: Mapping[Hashable, Any]) -> Mapping[Hashable, GraphNode]:
    """The part of the graph a dask-expr collection needs, holding the futures it references."""
    layer = culled(done.for_exprs, keys)
    holds = {**inherited, **done.holds}
    if not holds:
        return layer
    from dedupgraph.scatter import HoldingLayer

    used = {dep for node in layer.values() for dep in node.dependencies if dep in holds}
    return HoldingLayer(layer, refs=tuple(holds[key] for key in sorted(used, key=str)))


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
