"""Before a legacy graph is materialized: could the pass find anything in it at all?

>>> import dask.array as da, numpy as np
>>> from dask.base import collections_to_expr
>>> from dedupgraph.settings import Settings
>>> x = (da.ones((8, 4), chunks=(1, 4)) + 1).sum()
>>> nothing_large(collections_to_expr([x]).optimize(), Settings())
True
>>> y = da.ones((8, 4), chunks=(1, 4)).map_blocks(lambda b, t: b, np.arange(50_000))  # 400 kB, in each task
>>> nothing_large(collections_to_expr([y]).optimize(), Settings())
False

A graph built from legacy collections (arrays, delayed values, bags) reaches
the scheduler as ``HighLevelGraph`` layers, in which every value its tasks
will carry appears once: a ``Blockwise`` layer holds one template task and
its literal arguments for all of its blocks; a ``MaterializedLayer`` holds
its tasks.  Reading those is much cheaper than walking the materialized
graph, where a fused blockwise task repeats its template for every block
(measured, 60,000 array tasks: about 0.05 s against 0.45 s of CPU).  If
nothing there is as large as ``min-bytes``, the pass would hoist nothing:
the route skips it.

Only a gate: where the layers do hold something large, the pass walks the
materialized graph as usual.  (Hoisting a ``Blockwise`` literal right in its
layer, as dask does with a delayed argument, would save rebuilding its
tasks, but it changes how dask fuses the layers, and with it the task keys.)

Conservative: any layer type, dependency type or optimizer not known here,
and any expression that is not made of legacy graphs (dask-expr, array-expr,
``client.map``), answers False.  dask's own low-level optimizers (culling,
blockwise and linear fusion, slicing) build new tasks from these values,
never new large values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dedupgraph.fingerprint import FingerprintMemo, is_obviously_small
from dedupgraph.settings import Settings
from dedupgraph.transform import SMALL_CONTAINER_LEN, walk_leaves

# Values that ``Blockwise`` dependencies of these types give each block: shapes, slices, block ids.
_SMALL_BLOCKWISE_DEPS = frozenset({"ArrayChunkShapeDep", "ArraySliceDep", "ArrayBlockIdDep", "ArrayBlockwiseDep"})


class _Large(Exception):
    """Something as large as ``min-bytes``, or not known to be small: the pass must look."""


def nothing_large(expr: Any, settings: Settings) -> bool:
    """True only if materializing ``expr`` gives tasks that carry nothing of ``min-bytes`` or more."""
    try:
        from dask._expr import HLGExpr, _HLGExprSequence
        from dask.blockwise import Blockwise
        from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
    except ImportError:  # another dask: no shortcut
        return False
    from dedupgraph.route import _expressions

    memo = FingerprintMemo(settings.min_bytes, frozenset(settings.exclude))
    read = 0  # legacy graphs read: an expression without any is not one of them

    def leaf(value: Any, where: str = "") -> None:
        if is_obviously_small(value, settings.min_bytes):
            return
        fp = memo.fingerprint(value)  # None: excluded or unpicklable, inline anyway
        if fp is not None and fp.nbytes >= settings.min_bytes:
            raise _Large

    try:
        for node in _expressions(expr):
            if isinstance(node, _HLGExprSequence):
                continue
            if not isinstance(node, HLGExpr) or not _known_optimizer(node.low_level_optimizer):
                return False
            graph = node.operand("dsk")
            if not isinstance(graph, HighLevelGraph):
                continue  # HLGFinalizeCompute: its graph is the HLGExpr inside, read on its own
            read += 1
            postcompute = node.postcompute
            for func, extra in postcompute if isinstance(postcompute, list) else [postcompute] if postcompute else []:
                _values((func, *extra), leaf)
            for layer in graph.layers.values():
                if type(layer) is Blockwise:
                    _blockwise(layer, leaf)
                elif type(layer) is MaterializedLayer:
                    for task in layer.mapping.values():
                        _top_level(task, leaf)
                else:
                    return False
    except _Large:
        return False
    return read > 0


def _known_optimizer(optimizer: Any) -> bool:
    from dedupgraph.optimizer import Deduplicator

    if isinstance(optimizer, Deduplicator):  # the config route: neutralized before materializing
        optimizer = optimizer.base
    if optimizer is None:
        return True
    return (getattr(optimizer, "__module__", ""), getattr(optimizer, "__name__", "")) in {
        ("dask.array.optimization", "optimize"),
        ("dask.bag.core", "optimize"),
        ("dask.delayed", "optimize"),
        ("dedupgraph.optimizer", "_array_optimize"),
        ("dedupgraph.optimizer", "_delayed_optimize"),
        ("dedupgraph.optimizer", "_bag_optimize"),
    }


def _blockwise(layer: Any, leaf: Any) -> None:
    """The template task, the literal arguments and the per-block dependencies of one layer."""
    from dask._task_spec import GraphNode, TaskRef

    walk_leaves(layer.task, leaf)
    for arg, index in layer.indices:
        if index is None and not isinstance(arg, (TaskRef, GraphNode)):
            _values((arg,), leaf)
    for dep in layer.io_deps.values():
        kind = type(dep).__name__
        if kind == "BlockwiseDepDict":
            _values(dep.mapping.values(), leaf)
        elif kind not in _SMALL_BLOCKWISE_DEPS:
            raise _Large  # not known to be small: let the pass look


def _top_level(task: Any, leaf: Any) -> None:
    """A graph entry: a ``Task``'s leaves, a legacy ``(func, *args)`` tuple's; data entries are keys already."""
    from dask._task_spec import Task

    if isinstance(task, Task):
        walk_leaves(task, leaf)
    elif isinstance(task, tuple) and task and callable(task[0]):
        _values(task, leaf)
    elif isinstance(task, (list, dict, set)):  # containers become container tasks
        _values((task,), leaf)


def _values(values: Iterable[Any], leaf: Any) -> None:
    """Leaves of legacy task arguments, as the pass will see them once converted."""
    from dask._task_spec import DataNode, GraphNode, Task

    for value in values:
        typ = type(value)
        if isinstance(value, Task):
            walk_leaves(value, leaf)
        elif isinstance(value, DataNode):
            leaf(value.value)
        elif isinstance(value, GraphNode):
            continue
        elif typ in (list, tuple, set, frozenset, dict):
            items = list(value.values()) if typ is dict else list(value)
            if len(items) > SMALL_CONTAINER_LEN and not all(_key_like(v) for v in items):
                leaf(value)  # the pass judges a long plain container whole
            _values(items, leaf)
        else:
            leaf(value)


def _key_like(value: Any) -> bool:
    # a long list of keys becomes a container of references, never a value
    return isinstance(value, str) or (isinstance(value, tuple) and bool(value) and isinstance(value[0], str))
