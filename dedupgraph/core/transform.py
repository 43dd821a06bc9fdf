"""One traversal over every kind of value a dask task can hold.

>>> from dask._task_spec import Task, TaskRef
>>> class Shout(TaskTransformer):
...     def visit_leaf(self, value, where):
...         return value.upper() if isinstance(value, str) else value
>>> Shout().visit_node(Task("k", max, "a", ["b", 3])).args
('A', List(('B', 3)))

Like ``ast.NodeVisitor`` and ``ast.NodeTransformer``, there are two twins with
the same knowledge of node types: :func:`walk_leaves` reads (stage 1 runs it on
every task, so it builds nothing and keeps an explicit stack), and
:class:`TaskTransformer` rebuilds (stage 3 runs it on the few tasks that
change); subclasses override :meth:`TaskTransformer.visit_leaf` and every node
that does not change is returned as the very same object.  Leaves are the places a
task carries a Python value: the function, positional and keyword arguments,
the elements of small plain containers, the values of inline ``DataNode``s,
and all of these inside nested tasks and the inner graphs of fused
(``_execute_subgraph``) tasks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Container, Iterable
from typing import Any

from dask._task_spec import (
    Alias,
    DataNode,
    Dict,
    GraphNode,
    List,
    NestedContainer,
    Set,
    Task,
    TaskRef,
    Tuple,
    _execute_subgraph,
)

from dedupgraph.core.runtime import call

# Plain containers up to this length are looked into, element by element, so
# that a large object inside ``k=[model, 1]`` is found.  Longer ones (a lookup
# dict with 10,000 entries) are judged whole, as one value.
SMALL_CONTAINER_LEN = 16
_PLAIN_CONTAINERS = frozenset(map(id, (list, tuple, dict, set)))  # by id, as _NOTHING_INSIDE


# Where a leaf sits, as reported to ``visit_leaf``.  Inside a container or a
# fused subgraph the enclosing place wins: users know "my object is in a fused
# task", not which inner argument slot dask chose for it.  SUBGRAPH wins over
# everything, so the rewrite can tell when inner tasks need no visit at all.
FUNCTION = "function"
ARGUMENT = "argument"
KEYWORD = "keyword"
CONTAINER = "container"
SUBGRAPH = "fused subgraph"  # anywhere inside the inner tasks of a fused task
SUBGRAPH_INPUT = "fused subgraph input"  # an inline input of a fused task


def inside_container(where: str | None) -> str:
    """The position of what a container holds, the container being at ``where``.

    >>> inside_container(ARGUMENT), inside_container(SUBGRAPH)
    ('container', 'fused subgraph')
    """
    return CONTAINER if where in (None, ARGUMENT, KEYWORD) else where


# Values that can never hold a large object: skipped before any call.  By the
# type's id: some metaclasses make their classes unhashable, and ``in`` would raise.
_NOTHING_INSIDE = frozenset(map(id, (int, float, bool, type(None), complex, slice, range, TaskRef, Alias)))

Visit = Callable[[Any, str], object]


# Per pass over one graph, see walk_leaves: id of a fused task's inner graph ->
# (that graph, the values of its inline DataNodes, the leaves of its inner tasks)
SubgraphLeaves = dict[int, tuple[Any, list[Any], list[Any]]]


def walk_leaves(
    node: GraphNode, visit: Visit, skip: Container[int] = frozenset(), subgraphs: SubgraphLeaves | None = None
) -> None:
    """Call ``visit(value, where)`` for every leaf of a top-level graph entry.

    >>> seen = []
    >>> walk_leaves(Task("k", max, 1, [2, "x"], key=TaskRef("y")), lambda v, w: seen.append((v, w)))
    >>> seen
    [(<built-in function max>, 'function'), ('x', 'container')]

    Reads only; sees exactly the leaves :class:`TaskTransformer` would visit,
    except those whose ``id`` is in ``skip`` (values already judged, which
    recur in every task: functions, dtypes, partials).  Stage 1 runs it on
    every task of graphs of 10^6 tasks, hence the explicit stack of tasks.

    ``subgraphs``: a dict the caller keeps for one walk over one graph, in
    which ``skip`` only grows.  The fused tasks of one blockwise layer all
    hold the very same inner graph object (dask builds it once per layer):
    its inner tasks are then walked once, and each later task holding it
    only revisits the leaves found there (minus those ``skip`` gained since),
    in the same order (what it saves: docs/benchmarks.rst, "Measurements
    behind the code").
    """
    if type(node) is Task and node.func is not _execute_subgraph:
        # the common entry, as _walk_stack would take it, without the stack's first round
        stack: list[tuple[Task, str | None]] = []
        if id(node.func) not in skip:
            visit(node.func, FUNCTION)
        _walk_values(node.args, ARGUMENT, visit, skip, stack)
        if node.kwargs:
            _walk_values(node.kwargs.values(), KEYWORD, visit, skip, stack)
        if stack:
            _walk_stack(stack, visit, skip, subgraphs)
    elif isinstance(node, Task):
        _walk_stack([(node, None)], visit, skip, subgraphs)


def _walk_stack(
    stack: list[tuple[Task, str | None]], visit: Visit, skip: Container[int], subgraphs: SubgraphLeaves | None
) -> None:
    while stack:
        task, where = stack.pop()
        typ = type(task)
        if typ is not Task and is_container_task_type(typ):
            _walk_values(task.args, inside_container(where), visit, skip, stack)
        elif task.func is _execute_subgraph:
            if subgraphs is None:
                for inner in task.args[0].values():
                    if isinstance(inner, Task):
                        stack.append((inner, SUBGRAPH))
                    elif isinstance(inner, DataNode) and id(inner.value) not in skip:
                        visit(inner.value, SUBGRAPH)
                _walk_values(task.args[3:], where or SUBGRAPH_INPUT, visit, skip, stack)
            else:
                _walk_subgraph_task(task, where, visit, skip, subgraphs)
        else:
            if id(task.func) not in skip:
                visit(task.func, where or FUNCTION)
            _walk_values(task.args, where or ARGUMENT, visit, skip, stack)
            if task.kwargs:
                _walk_values(task.kwargs.values(), where or KEYWORD, visit, skip, stack)


def _walk_subgraph_task(task: Task, where: str | None, visit: Visit, skip: Container[int], subgraphs: SubgraphLeaves) -> None:
    """A fused task, with its inner graph walked once per graph object (the order of the plain walk)."""
    inner = task.args[0]
    known = subgraphs.get(id(inner))
    if known is None:
        data = [node.value for node in inner.values() if isinstance(node, DataNode)]
        leaves: list[Any] = []
        # the plain walk pops the inner tasks after the task's inputs, last first
        tasks = [(node, SUBGRAPH) for node in inner.values() if isinstance(node, Task)]
        _walk_stack(tasks, lambda value, _: leaves.append(value), skip, subgraphs)  # every position: SUBGRAPH
        known = subgraphs[id(inner)] = (inner, data, leaves)  # holding ``inner`` keeps its id unique
    _, data, leaves = known
    for value in data:
        if id(value) not in skip:
            visit(value, SUBGRAPH)
    stack: list[tuple[Task, str | None]] = []
    _walk_values(task.args[3:], where or SUBGRAPH_INPUT, visit, skip, stack)
    _walk_stack(stack, visit, skip, subgraphs)
    for value in leaves:
        if id(value) not in skip:
            visit(value, SUBGRAPH)


def _walk_values(
    values: Iterable[Any],
    where: str,
    visit: Visit,
    skip: Container[int],
    stack: list[tuple[Task, str | None]],
) -> None:
    for value in values:
        typ = type(value)
        if id(typ) in _NOTHING_INSIDE or id(value) in skip:
            continue
        if isinstance(value, GraphNode):  # one check for the nodes: most leaves are none
            if isinstance(value, Task):
                stack.append((value, where))
            elif isinstance(value, DataNode) and id(value.value) not in skip:
                visit(value.value, where)
        elif isinstance(value, TaskRef):
            continue
        elif id(typ) in _PLAIN_CONTAINERS and len(value) <= SMALL_CONTAINER_LEN:
            _walk_values(value.values() if typ is dict else value, inside_container(where), visit, skip, stack)
        else:
            visit(value, where)


@functools.cache
def is_container_task_type(typ: type) -> bool:
    """``issubclass(typ, NestedContainer)``, cached: it is an ABC, and ABC checks are slow."""
    return issubclass(typ, NestedContainer)


class TaskTransformer:
    """Visit every value in a task; rebuild only the nodes whose leaves change.

    Override :meth:`visit_leaf`.  Each instance serves one pass over one graph.
    Set ``visit_subgraph_inner = False`` when no replaced leaf can sit in the
    inner tasks of fused tasks (no ``SUBGRAPH`` position): they are then
    kept as they are without a visit, the rewrite's main saving.
    The ``where`` arguments carry an enclosing position (``CONTAINER``,
    ``SUBGRAPH``) down to the leaves; ``None`` means "at the task's own level".
    """

    visit_subgraph_inner = True

    def visit_node(self, node: GraphNode) -> GraphNode:
        """A top-level graph entry.  ``DataNode``s and ``Alias``es there are keys already."""
        if isinstance(node, Task):
            return self.visit_task(node)
        return node

    def visit_leaf(self, value: Any, where: str) -> Any:
        """A Python value carried by a task; return a replacement (e.g. a ``TaskRef``) or ``value``."""
        return value

    def visit_value(self, value: Any, where: str) -> Any:
        """Any value found inside a task."""
        if id(type(value)) in _NOTHING_INSIDE or isinstance(value, TaskRef):
            return value
        if isinstance(value, GraphNode):
            if isinstance(value, Task):
                return self.visit_task(value, where)
            if isinstance(value, DataNode):
                return self.visit_data_node(value, where)
            return value  # Alias and node types we do not know stay as they are
        if id(type(value)) in _PLAIN_CONTAINERS and len(value) <= SMALL_CONTAINER_LEN:
            return self.visit_plain_container(value, where)
        return self.visit_leaf(value, where)

    def visit_task(self, task: Task, where: str | None = None) -> GraphNode:
        if type(task) is not Task and is_container_task_type(type(task)):
            return self.visit_container_task(task, where)
        if task.func is _execute_subgraph:
            return self.visit_subgraph_task(task, where)
        func = self.visit_function(task.func, where or FUNCTION)
        args = self._visit_tuple(task.args, where or ARGUMENT)
        kwargs = self._visit_dict(task.kwargs, where or KEYWORD)
        if func is task.func and args is task.args and kwargs is task.kwargs:
            return task
        if func is not task.func:
            args = (func, *args)
            func = call
        return rebuilt(task, func, args, kwargs)

    def visit_function(self, func: Callable[..., Any], where: str) -> Any:
        # A coroutine function called through ``call`` would not be awaited.
        new = self.visit_leaf(func, where)
        if new is not func and inspect.iscoroutinefunction(func):
            return func
        return new

    def visit_data_node(self, node: DataNode, where: str) -> Any:
        """An inline ``DataNode`` (as fused tasks carry their literal inputs)."""
        new = self.visit_leaf(node.value, where)
        if new is node.value:
            return node
        if isinstance(new, (TaskRef, GraphNode)):
            return new
        return DataNode(node.key, new)

    def visit_container_task(self, task: NestedContainer, where: str | None) -> GraphNode:
        args = self._visit_tuple(task.args, inside_container(where))
        if args is task.args:
            return task
        return _container_task(type(task), args)

    def visit_plain_container(self, value: list | tuple | dict | set, where: str) -> Any:
        inner_where = inside_container(where)
        if isinstance(value, dict):
            old_values = tuple(value.values())
            new_values = self._visit_tuple(old_values, inner_where)
            if new_values is old_values:
                return value
            flat = [x for pair in zip(value.keys(), new_values) for x in pair]
            return Dict(*flat)
        items = tuple(value)
        new_items = self._visit_tuple(items, inner_where)
        if new_items is items:
            return value
        return _container_task(_CONTAINER_TASKS[type(value)], new_items)

    def visit_subgraph_task(self, task: Task, where: str | None) -> GraphNode:
        """A fused task: ``_execute_subgraph(inner_dsk, outkey, inkeys, *deps)``."""
        inner, outkey, inkeys = task.args[:3]
        deps = task.args[3:]
        new_deps = self._visit_tuple(deps, where or SUBGRAPH_INPUT)
        if self.visit_subgraph_inner:
            new_inner = {key: self._visit_inner(key, node) for key, node in inner.items()}
            inner_changed = any(new_inner[k] is not inner[k] for k in inner)
        else:
            new_inner, inner_changed = inner, False
        if not inner_changed:
            if new_deps is deps:
                return task
            return rebuilt(task, task.func, (inner, outkey, inkeys, *new_deps), task.kwargs)
        # Inner tasks that now reference a hoisted key get it as an extra input.
        provided = set(new_inner) | set(inkeys)
        extra = sorted(
            {
                dep
                for key, node in new_inner.items()
                if node is not inner[key]
                for dep in node.dependencies
                if dep not in provided
            },
            key=str,
        )
        args = (
            new_inner,
            outkey,
            (*inkeys, *extra),
            *new_deps,
            *(TaskRef(k) for k in extra),
        )
        return rebuilt(task, task.func, args, task.kwargs)

    def _visit_inner(self, key: Any, node: Any) -> Any:
        if isinstance(node, DataNode):
            new = self.visit_data_node(node, SUBGRAPH)
            if isinstance(new, TaskRef):
                # the inner key must still exist: point it at the hoisted key
                return Alias(key, new.key)
            return new
        if isinstance(node, Task):
            return self.visit_task(node, SUBGRAPH)
        return node

    def _visit_tuple(self, values: tuple[Any, ...], where: str) -> tuple[Any, ...]:
        """The values visited; the same tuple object if none changed."""
        new: list[Any] | None = None
        for index, value in enumerate(values):
            if id(type(value)) in _NOTHING_INSIDE:
                continue
            replacement = self.visit_value(value, where)
            if replacement is not value:
                if new is None:
                    new = list(values)
                new[index] = replacement
        return values if new is None else tuple(new)

    def _visit_dict(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        if not values:
            return values
        new = self._visit_tuple(tuple(values.values()), where)
        return values if all(n is o for n, o in zip(new, values.values())) else dict(zip(values, new))


def rebuilt(task: Task, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
    """A new task like ``task`` (same type, key and extra slots) with new contents."""
    if type(task) is Task:  # the common case, without the generic slot lookup
        return Task(task.key, func, *args, _data_producer=task._data_producer, **kwargs)
    extras = {name: getattr(task, name) for name in _extra_slots(type(task))}
    return type(task)(task.key, func, *args, **kwargs, **extras)


@functools.cache
def _extra_slots(typ: type[Task]) -> tuple[str, ...]:
    # Task subclasses may take extra constructor arguments stored in slots
    # (``_data_producer`` on Task itself); dask's own ``substitute`` carries them over.
    from dask._task_spec import _extra_args

    return tuple(sorted(_extra_args(typ) - {"key", "func"}))


_CONTAINER_TASKS: dict[type, type[NestedContainer]] = {list: List, tuple: Tuple, set: Set, dict: Dict}


def _container_task(typ: type[NestedContainer], items: tuple[Any, ...]) -> NestedContainer:
    if typ is Dict:
        return Dict(*items)
    if len(items) == 1 and isinstance(items[0], typ.klass):
        # a lone argument of the container's own type would be unpacked
        return typ(typ.klass(items))
    return typ(*items)

