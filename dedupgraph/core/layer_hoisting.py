"""Hoisting in the layers: the broadcast arguments of ``Blockwise`` layers, before dask's array optimizer runs.

>>> import dask.array as da
>>> import pandas as pd
>>> from dask.array.optimization import optimize
>>> from dedupgraph.settings import Settings
>>> table = pd.Series(range(50_000))
>>> x = da.ones((8, 4), chunks=(1, 4)).map_blocks(lambda b, t: b + len(t), table)
>>> hoisted = hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings())
>>> [(h.key.rsplit("-", 1)[0], len(h.tasks)) for h in hoisted.plan.hoists.values()]
[('dedup-Series', 8)]
>>> sorted(name.split("-")[0] for name in hoisted.graph.layers)
['dedup', 'lambda', 'ones_like']
>>> graph, plan = optimized_with_layer_hoists(optimize, x.__dask_graph__(), x.__dask_keys__(), {}, Settings())
>>> [len(hoist.tasks) for hoist in plan.hoists.values()]
[8]

``map_blocks(f, obj)`` puts ``obj`` once in its layer, as an argument every
block gets (index ``None``); materializing copies it into one node per block,
and the pass then rebuilds every one of those tasks. Here the argument
becomes ``TaskRef(key)`` in the layer, the form dask itself gives a
``Delayed`` argument, and ``key`` a layer of its own: no task is rebuilt.

Only where the result is what the pass would make of the materialized
graph: everything else answers None and the caller runs the pass as usual.
Both routes use it: the config route's pass calls
:func:`optimized_with_layer_hoists` in place of dask's array optimizer, and
the scheduler route puts a :class:`LayerHoisting` in that optimizer's place
in a submitted expression (:func:`installed`), for distributed's own
materialization to call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task, TaskRef
from dask.blockwise import Blockwise, optimize_blockwise
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from dedupgraph.core.candidates import find_candidates
from dedupgraph.core.fingerprint import FingerprintMemo, is_obviously_small
from dedupgraph.core.immutability import merge_policy
from dedupgraph.core.optimizers import is_array_optimizer
from dedupgraph.core.plan import Plan, plan_hoists
from dedupgraph.core.prescan import expressions, layers_hold_nothing_large
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")

Optimizer = Callable[..., Mapping[Hashable, Any]]


@dataclass(frozen=True)
class LayerHoist:
    """A new ``HighLevelGraph`` with broadcast arguments hoisted, and the plan that says which."""

    graph: HighLevelGraph
    plan: Plan


def hoisted_in_layers(graph: Any, keys: Any, settings: Settings, memo: FingerprintMemo | None = None) -> LayerHoist | None:
    """``graph`` with each large broadcast argument of its ``Blockwise`` layers under a key of its own.

    None when there is none, or when the pass on the materialized graph could
    differ: another large value is left (in a layer of another type, in a
    keyword), equal copies are kept apart (``merge-equal``), or the new
    dependency could change what dask fuses, which renames keys. What dask's
    optimizer then makes of the graph is checked by :func:`fused_as_plain`. ``memo``: as for the pass,
    fingerprints shared with the caller's other stages.
    """
    if not isinstance(graph, HighLevelGraph):
        return None
    carried = dict(_broadcast_arguments(graph, settings))
    if not carried:
        return None
    if memo is None:
        memo = FingerprintMemo.for_pass(settings)
    planned = _plan(graph, carried, settings, memo)
    if planned is None:
        return None
    plan, key_of = planned
    layers = dict(graph.layers)
    dependencies = {name: set(deps) for name, deps in graph.dependencies.items()}
    for name in carried:
        new_keys = {key_of[id(arg)] for arg, index in graph.layers[name].indices if id(arg) in key_of and index is None}
        if new_keys:
            layers[name] = _with_references(graph.layers[name], key_of)
            dependencies[name] |= new_keys
    for hoist in plan.hoists.values():
        layers[hoist.key] = MaterializedLayer({hoist.key: DataNode(hoist.key, hoist.value)})
        dependencies[hoist.key] = set()
    new = HighLevelGraph(layers, dependencies)
    if not layers_hold_nothing_large(new, settings, memo) or _fusion_could_change(new, keys, set(key_of.values())):
        return None
    return LayerHoist(new, plan)


def fused_as_plain(optimized: Any, plan: Plan, min_count: int) -> bool:
    """Whether dask's optimizer made of the hoisted graph what the pass makes of plain dask's output.

    Two things could differ. The plan counts the blocks of whole layers, and
    dask then culls to the keys asked for, which may leave fewer carrying
    tasks than ``min_count`` (at least 2, or dask's linear fusion would fuse
    the key into its one dependent). And linear fusion joins a task to its
    only dependency when that has no other dependent: a carrying task with
    one dependency in plain dask has two here, and stays apart.
    """
    hoisted = {hoist.key for hoist in plan.hoists.values()}
    carriers = dict.fromkeys(hoisted, 0)
    if isinstance(optimized, HighLevelGraph):  # not fused below the layers
        for name, deps in optimized.dependencies.items():
            for key in deps & hoisted:
                carriers[key] += len(optimized.layers[name].get_output_keys())
        return min(carriers.values()) >= max(min_count, 2)
    single: set[Hashable] = set()  # the one other dependency of a carrying task that has one
    for node in optimized.values():
        deps = node.dependencies
        if deps.isdisjoint(hoisted):
            continue
        for hoist in deps & hoisted:
            carriers[hoist] += 1
        others = deps - hoisted
        if len(others) == 1:
            single |= others
    if min(carriers.values()) < max(min_count, 2):
        return False
    return not single or not any(_only_dependent(optimized, single))


def _only_dependent(graph: Mapping[Hashable, Any], single: set[Hashable]) -> Iterator[bool]:
    """For each task in ``single``: whether it has one dependent only (the carrying task)."""
    dependents: dict[Hashable, int] = dict.fromkeys(single, 0)
    for node in graph.values():
        for dep in node.dependencies:
            if dep in dependents:
                dependents[dep] += 1
    return (dep in graph and dependents[dep] == 1 for dep in single)


def _broadcast_arguments(graph: HighLevelGraph, settings: Settings) -> Iterator[tuple[str, list[Any]]]:
    """(layer name, its broadcast arguments not known to be small), for layers that have any."""
    for name, layer in graph.layers.items():
        if type(layer) is not Blockwise:  # subclasses may read their indices their own way
            continue
        args = [
            arg
            for arg, index in layer.indices
            if index is None
            and not isinstance(arg, (TaskRef, GraphNode))
            and not is_obviously_small(arg, settings.smallest_hoisted)
        ]
        if args:
            yield name, args


def _plan(
    graph: HighLevelGraph, carried: dict[str, list[Any]], settings: Settings, memo: FingerprintMemo
) -> tuple[Plan, dict[int, str]] | None:
    """Stages 1 and 2 with each layer as one task, counted as the blocks that carry the argument.

    With the key of each hoisted argument, by identity (equal objects that
    may merge share one).
    """
    stand_ins = {name: Task(name, tuple, *args) for name, args in carried.items()}
    candidates = find_candidates(stand_ins, memo, record_from_bytes=settings.smallest_hoisted, may_merge=merge_policy(settings.merge_equal))
    if candidates.apart or not candidates.fingerprints:
        return None  # equal copies kept apart take keys named after their first task: the pass's to name
    blocks: dict[str, list[Hashable]] = {}
    for group, names in candidates.keys.items():
        blocks[group] = [key for name in names for key in sorted(graph.layers[name].get_output_keys())]
    plan = plan_hoists(replace(candidates, keys=blocks), settings)
    if len(plan.hoists) != len(candidates.fingerprints):
        return None  # something large stays inline (few blocks, excluded): the pass reports it
    key_of = {ident: plan.hoists[group].key for ident, group in candidates.group_of.items() if group in plan.hoists}
    arguments = {id(arg) for args in carried.values() for arg in args}
    if not arguments.issuperset(key_of):
        return None  # found inside an argument (a list of arrays): the pass hoists each
    return plan, key_of


def _with_references(layer: Blockwise, key_of: dict[int, str]) -> Blockwise:
    """A new layer like ``layer`` whose hoisted broadcast arguments are references."""
    indices = [
        (TaskRef(key_of[id(arg)]), None) if index is None and id(arg) in key_of else (arg, index)
        for arg, index in layer.indices
    ]
    new = Blockwise(
        layer.output,
        layer.output_indices,
        layer.task,
        indices,
        layer.numblocks,
        concatenate=layer.concatenate,
        new_axes=layer.new_axes,
        output_blocks=layer.output_blocks,
        annotations=layer.annotations,
        io_deps=layer.io_deps,
    )
    new.collection_annotations = layer.collection_annotations
    return new


def _fusion_could_change(graph: HighLevelGraph, keys: Any, hoisted: set[str]) -> bool:
    """Whether a hoisted key could change what dask fuses, judged on the layers as blockwise fusion leaves them.

    Safe only where each layer that depends on a hoisted key depends on that
    one key and nothing else, so its tasks had no dependency before. Any other
    dependency could tip one of dask's fusions: ``fuse_roots`` joins a
    ``Blockwise`` layer with its dependencies when there are several and none
    has dependencies of its own (a hoisted key has none), and linear fusion
    joins a task to its only dependency, which a hoisted key would make one of
    two. Either renames keys. Judged here, before dask's optimizer runs, so
    that a graph which would fall back is not optimized twice.
    """
    fused = optimize_blockwise(graph, keys=list(_flat(keys)))
    return any(deps & hoisted and len(deps) > 1 for deps in fused.dependencies.values())


def _flat(keys: Any) -> Iterator[Hashable]:
    if isinstance(keys, list):
        for key in keys:
            yield from _flat(key)
    else:
        yield keys


def optimized_with_layer_hoists(
    base: Optimizer,
    dsk: Mapping[Hashable, Any],
    keys: Any,
    kwargs: dict[str, Any],
    settings: Settings,
    memo: FingerprintMemo | None = None,
) -> tuple[Mapping[Hashable, Any], Plan] | None:
    """``base``'s output for ``dsk`` with its blockwise broadcast arguments hoisted first, and the plan; or None.

    None, and ``base`` not run, unless all of the pass's work can be done
    in the layers. ``base`` must be dask's own array optimizer, whose fusion
    this module knows (the caller tells). Not for dry runs, shared memory
    (``share="host"`` places the object otherwise), ``check_mutation``
    (carrying tasks call the check: each is rebuilt) or DEBUG logs (which
    name what the pass leaves inline): the pass does those.
    """
    if settings.dry_run or settings.share == "host" or settings.check_mutation or logger.isEnabledFor(logging.DEBUG):
        return None
    hoisted = hoisted_in_layers(dsk, keys, settings, memo)
    if hoisted is None:
        return None
    try:
        out = base(hoisted.graph, keys, **kwargs)
    except Exception:
        logger.debug("dedupgraph: dask's optimizer failed on the hoisted layers; the pass walks the graph", exc_info=True)
        return None
    if not fused_as_plain(out, hoisted.plan, settings.min_count):
        return None  # culled below min-count, or fused otherwise: the pass on plain dask's output decides
    return out, hoisted.plan


class LayerHoisting:
    """Dask's array optimizer for one submission, hoisting in the layers first where that does all the pass would.

    Records what each call did: ``plans`` of those that hoisted, ``declined``
    the count of those that left the pass to run, ``failed`` the count of
    those among them that raised.
    """

    def __init__(self, base: Optimizer, settings: Settings, memo: FingerprintMemo) -> None:
        self.base = base
        self.settings = settings
        self.memo = memo
        self.plans: list[Plan] = []
        self.declined = 0
        self.failed = 0

    @property
    def applied(self) -> bool:
        """Whether every call hoisted in the layers: the materialized graph needs no pass."""
        return bool(self.plans) and not self.declined

    def __call__(self, dsk: Mapping[Hashable, Any], keys: Any, **kwargs: Any) -> Mapping[Hashable, Any]:
        try:
            hoisted = optimized_with_layer_hoists(self.base, dsk, keys, kwargs, self.settings, self.memo)
        except Exception:
            # inside distributed's materialization: never let it fail there
            logger.warning("dedupgraph: hoisting in the layers failed; the pass walks the graph", exc_info=True)
            self.failed += 1
            hoisted = None
        if hoisted is None:
            self.declined += 1
            return self.base(dsk, keys, **kwargs)
        out, plan = hoisted
        self.plans.append(plan)
        return out


def installed(expr: Any, settings: Settings, memo: FingerprintMemo) -> LayerHoisting | None:
    """A :class:`LayerHoisting` put in the place of ``expr``'s one array optimizer; None where it does not fit.

    >>> import dask.array as da, pandas as pd
    >>> from dask.base import collections_to_expr
    >>> x = da.ones((8, 4), chunks=(1, 4)).map_blocks(lambda b, t: b + len(t), pd.Series(range(50_000)))
    >>> expr = collections_to_expr([x]).optimize()  # what Client.persist sends
    >>> hoisting = installed(expr, Settings(), FingerprintMemo.for_pass(Settings()))
    >>> graph = expr.__dask_graph__()  # the scheduler's materialization calls it
    >>> [len(hoist.tasks) for hoist in hoisting.plans[0].hoists.values()], hoisting.applied
    ([8], True)

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
