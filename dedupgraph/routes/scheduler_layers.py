"""The scheduler route's hoisting in the layers, while distributed materializes a legacy graph.

>>> import dask.array as da, pandas as pd
>>> from dask.base import collections_to_expr
>>> from dedupgraph.core.fingerprint import FingerprintMemo
>>> from dedupgraph.settings import Settings
>>> x = da.ones((8, 4), chunks=(1, 4)).map_blocks(lambda b, t: b + len(t), pd.Series(range(50_000)))
>>> expr = collections_to_expr([x]).optimize()  # what Client.persist sends
>>> settings = Settings()
>>> hoisting = installed(expr, settings, FingerprintMemo.for_pass(settings))
>>> graph = expr.__dask_graph__()  # the scheduler's materialization calls it
>>> [len(hoist.tasks) for hoist in hoisting.plans[0].hoists.values()], hoisting.applied
([8], True)

A graph of arrays arrives as ``HighLevelGraph`` layers, with dask's array
optimizer to run on them. The route puts :class:`LayerHoisting` in that
optimizer's place, which hoists each large broadcast argument in its
``Blockwise`` layer before dask optimizes (``dedupgraph.routes.layer_hoisting``),
instead of the pass rebuilding every task that carries it afterwards.
Only for a graph of one such optimizer call and nothing else: elsewhere
the pass runs after materializing, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping
from typing import Any

from dask._task_spec import GraphNode

from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.plan import Plan
from dedupgraph.core.prescan import expressions
from dedupgraph.routes.config import is_array_optimizer
from dedupgraph.routes.layer_hoisting import Optimizer, optimized_with_layer_hoists
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")


class LayerHoisting:
    """Dask's array optimizer for one submission, hoisting in the layers first where that does all the pass would.

    Records what each call did: ``plans`` of those that hoisted, ``declined``
    the count of those that left the pass to run, ``spent`` its own CPU
    time, dask's optimizer not included.
    """

    def __init__(self, base: Optimizer, settings: Settings, memo: FingerprintMemo) -> None:
        self.base = base
        self.settings = settings
        self.memo = memo
        self.plans: list[Plan] = []
        self.declined = 0
        self.spent = 0.0

    @property
    def applied(self) -> bool:
        """Whether every call hoisted in the layers: the materialized graph needs no pass."""
        return bool(self.plans) and not self.declined

    def __call__(self, dsk: Mapping[Hashable, Any], keys: Any, **kwargs: Any) -> Mapping[Hashable, Any]:
        base_spent = 0.0

        def timed_base(graph: Any, keys: Any, **kwargs: Any) -> Any:
            nonlocal base_spent
            start = time.thread_time()
            try:
                return self.base(graph, keys, **kwargs)
            finally:
                base_spent += time.thread_time() - start

        start = time.thread_time()
        try:
            hoisted = optimized_with_layer_hoists(timed_base, dsk, keys, kwargs, self.settings, self.memo)
        except Exception:
            # inside distributed's materialization: never let it fail there
            logger.warning("dedupgraph: hoisting in the layers failed; the pass walks the graph", exc_info=True)
            hoisted = None
        self.spent += time.thread_time() - start - base_spent
        if hoisted is None:
            self.declined += 1
            return self.base(dsk, keys, **kwargs)
        out, plan = hoisted
        self.plans.append(plan)
        return out


def installed(expr: Any, settings: Settings, memo: FingerprintMemo) -> LayerHoisting | None:
    """A :class:`LayerHoisting` put in the place of ``expr``'s one array optimizer; None where it does not fit.

    It fits an expression made of legacy graphs only, of which exactly one
    runs an optimizer, dask's array optimizer: a persist or compute of
    arrays, or of arrays built with ``dask.delayed`` arguments. Two graphs
    hoisted apart might hoist the same key, and the pass must not meet a
    key hoisted already: every other expression is left to the pass.
    """
    from dask._expr import HLGExpr, _HLGExprSequence

    top = expr
    if isinstance(expr, _HLGExprSequence):
        if len(expr.operands) != 1:
            return None
        top = expr.operands[0]
    if not isinstance(top, HLGExpr):
        return None
    for node in expressions(expr):
        if not isinstance(node, (HLGExpr, _HLGExprSequence)):
            return None  # dask-expr or array-expr in the tree: the pass walks what it makes
        if isinstance(node, HLGExpr) and node is not top and node is not top.operand("dsk"):
            return None  # another graph: only ``top``'s, or the one it finalizes, is optimized
    index = type(top)._parameters.index("low_level_optimizer")
    base = top.operands[index]
    if not is_array_optimizer(base):
        return None
    hoisting = LayerHoisting(base, settings, memo)
    top.operands[index] = hoisting
    return hoisting


class _Shape(GraphNode):
    """A task as ``dask.order`` sees it: a key, whether it is a task, and its dependencies."""

    __slots__ = ()

    def __init__(self, key: Hashable, dependencies: frozenset[Hashable]) -> None:
        self.key = key
        self._dependencies = dependencies


def as_plain_shapes(out: Mapping[Hashable, Any], hoisted: set[Hashable]) -> dict[Hashable, Any]:
    """``out`` without its ``hoisted`` keys, as ``dask.order`` would see plain dask's graph.

    >>> from dask._task_spec import DataNode, Task, TaskRef
    >>> out = {"k": DataNode("k", 1), "a": Task("a", len, TaskRef("k")), "b": Task("b", sum, [TaskRef("a")])}
    >>> shapes = as_plain_shapes(out, {"k"})
    >>> sorted(shapes), shapes["a"].dependencies, shapes["b"] is out["b"]
    (['a', 'b'], frozenset(), True)

    ``dask.order`` reads each node's dependencies and whether it is a task,
    nothing else: where the layer hoisting left every task as plain dask
    has it, bar the hoisted dependency, this orders as plain dask does.
    """
    shapes: dict[Hashable, Any] = {}
    for key, node in out.items():
        if key in hoisted:
            continue
        deps = node.dependencies
        shapes[key] = _Shape(key, deps - hoisted) if not deps.isdisjoint(hoisted) else node
    return shapes
