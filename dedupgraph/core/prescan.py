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
(docs/benchmarks.rst, "Measurements behind the code").  If
nothing there is as large as the smallest size the pass hoists, or what is
could not be carried by ``min-count`` tasks, the pass would hoist nothing:
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

from collections.abc import Container, Iterable, Iterator
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task

from dedupgraph.core.candidates import CarrierCounts
from dedupgraph.core.fingerprint import FingerprintMemo, is_obviously_small
from dedupgraph.core.immutability import merge_policy
from dedupgraph.core.optimizers import is_dask_optimizer
from dedupgraph.settings import Settings
from dedupgraph.core.transform import SMALL_CONTAINER_LEN, walk_leaves

# Values that ``Blockwise`` dependencies of these types give each block: shapes, slices, block ids.
_SMALL_BLOCKWISE_DEPS = frozenset({"ArrayChunkShapeDep", "ArraySliceDep", "ArrayBlockIdDep", "ArrayBlockwiseDep"})


class _Large(Exception):
    """Something the pass could hoist, or not known not to be: the pass must look."""


def nothing_large(expr: Any, settings: Settings, memo: FingerprintMemo | None = None) -> bool:
    """True only if materializing ``expr`` gives tasks that carry nothing the pass could hoist."""
    try:
        from dask._expr import HLGExpr, _HLGExprSequence
        from dask.highlevelgraph import HighLevelGraph
    except ImportError:  # another dask: no shortcut
        return False
    leaf = _Leaves(settings, memo)
    read = 0  # legacy graphs read: an expression without any is not one of them
    try:
        for node in expressions(expr):
            if isinstance(node, _HLGExprSequence):
                continue
            if not isinstance(node, HLGExpr) or not is_dask_optimizer(node.low_level_optimizer):
                return False
            graph = node.operand("dsk")
            if not isinstance(graph, HighLevelGraph):
                continue  # HLGFinalizeCompute: its graph is the HLGExpr inside, read on its own
            read += 1
            postcompute = node.postcompute
            for func, extra in postcompute if isinstance(postcompute, list) else [postcompute] if postcompute else []:
                _values((func, *extra), leaf)
            _layers(graph, leaf)
    except _Large:
        return False
    return read > 0


def layers_hold_nothing_large(graph: Any, settings: Settings, memo: FingerprintMemo | None = None) -> bool:
    """The same for one ``HighLevelGraph`` (what a legacy low-level optimizer receives), before it is optimized.

    >>> import dask.array as da
    >>> x = da.ones((8, 4), chunks=(1, 4)) + 1
    >>> layers_hold_nothing_large(x.__dask_graph__(), Settings())
    True
    """
    try:
        _layers(graph, _Leaves(settings, memo))
    except _Large:
        return False
    return True


class _Leaves:
    """The check on each leaf of one graph's layers: raises ``_Large`` at the first the pass could hoist.

    ``counted`` leaves are those of one task (a ``MaterializedLayer`` entry, one
    block's own value): such a leaf is not pickled until as many tasks as
    ``min-count`` could carry it (see ``candidates.carrier_token``), so that a
    graph whose every task carries its own medium object is read, not pickled.
    Other leaves (a ``Blockwise`` template or broadcast argument, which every
    block carries) are judged by size alone.
    """

    def __init__(self, settings: Settings, memo: FingerprintMemo | None = None) -> None:
        # the pass, given the same memo, pickles nothing twice
        self.memo = FingerprintMemo.for_pass(settings) if memo is None else memo
        self.smallest = settings.smallest_hoisted
        self.min_count = settings.min_count
        self.carriers = CarrierCounts(self.memo, merge_policy(settings.merge_equal))

    def __call__(self, value: Any, where: str = "") -> None:
        if is_obviously_small(value, self.smallest):
            return
        fp = self.memo.fingerprint(value)  # None: excluded or unpicklable, inline anyway
        if fp is not None and fp.nbytes >= self.smallest:
            raise _Large

    def counted(self, value: Any, where: str = "") -> None:
        if id(value) in self.carriers.skip:
            return
        count = self.carriers.add(value)
        if count == 0 or (count is not None and count < self.min_count):
            return
        self(value)
        self.carriers.skip.add(id(value))  # not large, or it would have raised


def _layers(graph: Any, leaf: _Leaves) -> None:
    from dask.blockwise import Blockwise
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    if not isinstance(graph, HighLevelGraph):
        raise _Large  # a plain dict: its tasks are for the pass to walk
    for layer in graph.layers.values():
        if type(layer) is Blockwise:
            _blockwise(layer, leaf)
        elif type(layer) is MaterializedLayer:
            for task in layer.mapping.values():
                _top_level(task, leaf.counted, leaf.carriers.skip)
        else:
            raise _Large  # a layer type not known here


def expressions(expr: Any) -> Iterator[Any]:
    """Every expression in ``expr``'s tree, each once, without tokenizing any (``Expr.walk`` would).

    >>> list(expressions(object()))
    []
    """
    from dask._expr import Expr

    if not isinstance(expr, Expr):
        return
    stack, seen = [expr], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(op for op in node.operands if isinstance(op, Expr))


def _blockwise(layer: Any, leaf: _Leaves) -> None:
    """The template task, the literal arguments and the per-block dependencies of one layer."""
    from dask._task_spec import GraphNode, TaskRef

    walk_leaves(layer.task, leaf)
    for arg, index in layer.indices:
        if index is None and not isinstance(arg, (TaskRef, GraphNode)):
            _values((arg,), leaf)
    for dep in layer.io_deps.values():
        kind = type(dep).__name__
        if kind == "BlockwiseDepDict":  # one value per block
            _values(dep.mapping.values(), leaf.counted)
        elif kind not in _SMALL_BLOCKWISE_DEPS:
            raise _Large  # not known to be small: let the pass look


def _top_level(task: Any, leaf: Any, skip: Container[int] = frozenset()) -> None:
    """A graph entry: a ``Task``'s leaves, a legacy ``(func, *args)`` tuple's; data entries are keys already."""
    if isinstance(task, Task):
        walk_leaves(task, leaf, skip)
    elif isinstance(task, tuple) and task and callable(task[0]):
        _values(task, leaf)
    elif isinstance(task, (list, dict, set)):  # containers become container tasks
        _values((task,), leaf)


# By the type's id: some metaclasses make their classes unhashable, and ``in`` would raise.
_ATOMS = frozenset(map(id, (int, float, bool, complex, type(None), slice, range, type(Ellipsis))))


def _small_tuple(value: tuple[Any, ...]) -> bool:
    # keys: ("name", 3, 0): a legacy graph has one in nearly every argument
    if len(value) > 8:
        return False
    for item in value:
        typ = type(item)
        if id(typ) not in _ATOMS and not (typ is str and len(item) < 64):
            return False
    return True


_CONTAINERS = frozenset(map(id, (list, tuple, set, frozenset, dict)))


def _values(values: Iterable[Any], leaf: Any) -> None:
    """Leaves of legacy task arguments, as the pass will see them once converted."""
    for value in values:
        typ = type(value)
        if id(typ) in _ATOMS or (typ is str and len(value) < 1024) or (typ is tuple and _small_tuple(value)):
            continue
        if id(typ) in _CONTAINERS:
            items = list(value.values()) if typ is dict else value
            if len(items) > SMALL_CONTAINER_LEN and not all(_key_like(v) for v in items):
                leaf(value)  # the pass judges a long plain container whole
            _values(items, leaf)
        elif isinstance(value, Task):
            walk_leaves(value, leaf)
        elif isinstance(value, DataNode):
            leaf(value.value)
        elif not isinstance(value, GraphNode):
            leaf(value)


def _key_like(value: Any) -> bool:
    # a long list of keys becomes a container of references, never a value
    return isinstance(value, str) or (isinstance(value, tuple) and bool(value) and isinstance(value[0], str))
