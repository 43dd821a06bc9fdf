"""Collections into one graph, and the client to send it to: what ``deduplicate`` and ``inspect`` share.

>>> import dask
>>> done = materialize([dask.delayed(sum)([1, 2]), dask.delayed(max)(3, 4)])
>>> len(done.graph), done.optimized
(2, {})
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dedupgraph.core.layers import layer_annotations
from dedupgraph.core.pipeline import Graph, task_graph
from dedupgraph.routes.config import without_pass

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class Materialized:
    """What computing some collections together would run, before the pass."""

    graph: Graph
    #: annotation kind -> key -> value, for the keys of arrays, bags and delayed values
    annotations: dict[str, dict[Hashable, Any]]
    #: index of an expression collection (dask-expr, array-expr) -> its optimized expression
    optimized: dict[int, Any]


def resolve_client(client: Client | bool | None) -> Client | None:
    """The client a route scatters to: ``client``, the default one for None or True, none for False.

    >>> resolve_client(False) is None
    True
    """
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


def materialize(collections: list[Any], fuse: bool = True) -> Materialized:
    """One optimized graph for all ``collections``, as computing them together would run it.

    The graph is what computing them would run, before the pass: each
    collection's own optimization (culling, fusion), the pass itself excepted.
    ``fuse``: whether dask-expr DataFrames are fused, as a local ``compute``
    does (a distributed Client's ``compute`` and ``persist`` do not).
    """
    from dask._expr import Expr

    graph: dict[Hashable, Any] = {}
    optimized_exprs: dict[int, Any] = {}
    legacy = [c for c in collections if not isinstance(getattr(c, "expr", None), Expr)]
    annotations: dict[str, dict[Hashable, Any]] = {}
    if legacy:
        legacy_graph, annotations = _legacy_graph(legacy)
        graph.update(legacy_graph)
    for index, coll in enumerate(collections):
        if isinstance(getattr(coll, "expr", None), Expr):
            # array-expr arrays have one way to optimize; DataFrames fuse or not
            # (dask-expr ignores annotations: there are none to keep)
            optimized = coll.expr.optimize(fuse=fuse) if is_dataframe_like(coll) else coll.expr.optimize()
            graph.update(optimized.__dask_graph__())
            optimized_exprs[index] = optimized
    return Materialized(task_graph(graph), annotations, optimized_exprs)


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
            optimizer = without_pass(coll.__dask_optimize__)
            delayed_by_optimizer.setdefault(id(optimizer), (optimizer, []))[1].append(coll)
            continue
        expr = HLGExpr.from_collection(coll)
        base = without_pass(expr.low_level_optimizer)
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


def _delayed_graph(optimizer: Any, group: list[Any]) -> Mapping[Hashable, Any]:
    """Many ``Delayed`` values, merged into one flat graph before their optimizer runs.

    dask keeps one graph layer per ``Delayed`` and culls every layer against
    all requested keys: quadratic in their number. One
    layer holding them all is culled in one linear walk, to the same tasks.
    """
    from dask.utils import ensure_dict

    merged: dict[Hashable, Any] = {}
    for value in group:
        merged.update(ensure_dict(value.__dask_graph__()))
    keys = [value.key for value in group]
    return merged if optimizer is None else ensure_dict(optimizer(merged, keys))


def is_dataframe_like(coll: Any) -> bool:
    """Whether ``coll`` is a dask-expr DataFrame, Series or Index.

    >>> is_dataframe_like([])
    False
    """
    try:
        from dask.dataframe.dask_expr._collection import FrameBase
    except ImportError:  # dask without its dataframe extra
        return False
    return isinstance(coll, FrameBase)
