"""One traversal over every kind of value a dask task can hold.

>>> from dask._task_spec import Task, TaskRef
>>> class Doubler(TaskTransformer):
...     def visit_leaf(self, value, where):
...         return value * 2 if isinstance(value, int) else value
>>> Doubler().visit_node(Task("k", max, 1, [2, 3])).args
(2, List((4, 6)))

Like ``ast.NodeTransformer``: subclasses override :meth:`TaskTransformer.visit_leaf`
and the traversal rebuilds a node only where a leaf changed; every node that
does not change is returned as the very same object.  Leaves are the places a
task carries a Python value: the function, positional and keyword arguments,
the elements of small plain containers, the values of inline ``DataNode``s,
and all of these inside nested tasks and the inner graphs of fused
(``_execute_subgraph``) tasks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
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

from dedupgraph.runtime import call

# Plain containers up to this length are looked into, element by element, so
# that a large object inside ``k=[model, 1]`` is found.  Longer ones (a lookup
# dict with 10,000 entries) are judged whole, as one value.
SMALL_CONTAINER_LEN = 16
_PLAIN_CONTAINERS = (list, tuple, dict, set)


# Where a leaf sits, as reported to ``visit_leaf``.  Inside a container or a
# fused subgraph the enclosing place wins: users know "my object is in a fused
# task", not which inner argument slot dask chose for it.
FUNCTION = "function"
ARGUMENT = "argument"
KEYWORD = "keyword"
CONTAINER = "container"
SUBGRAPH = "fused subgraph"


class TaskTransformer:
    """Visit every value in a task; rebuild only the nodes whose leaves change.

    Override :meth:`visit_leaf`.  Each instance serves one pass over one graph.
    The ``where`` arguments carry an enclosing position (``CONTAINER``,
    ``SUBGRAPH``) down to the leaves; ``None`` means "at the task's own level".
    """

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
        if isinstance(value, TaskRef):
            return value
        if isinstance(value, GraphNode):
            if isinstance(value, Task):
                return self.visit_task(value, where)
            if isinstance(value, DataNode):
                return self.visit_data_node(value, where)
            return value  # Alias and node types we do not know stay as they are
        if type(value) in _PLAIN_CONTAINERS and len(value) <= SMALL_CONTAINER_LEN:
            return self.visit_plain_container(value, where)
        return self.visit_leaf(value, where)

    def visit_task(self, task: Task, where: str | None = None) -> GraphNode:
        if isinstance(task, NestedContainer):
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
        return _rebuilt(task, func, args, kwargs)

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
        args = self._visit_tuple(task.args, where or CONTAINER)
        if args is task.args:
            return task
        return _container_task(type(task), args)

    def visit_plain_container(self, value: list | tuple | dict | set, where: str) -> Any:
        inner_where = CONTAINER if where in (ARGUMENT, KEYWORD) else where
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
        where = where or SUBGRAPH
        new_inner = {key: self._visit_inner(key, node, where) for key, node in inner.items()}
        new_deps = self._visit_tuple(deps, where)
        inner_changed = any(new_inner[k] is not inner[k] for k in inner)
        if not inner_changed and new_deps is deps:
            return task
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
        return _rebuilt(task, task.func, args, task.kwargs)

    def _visit_inner(self, key: Any, node: Any, where: str) -> Any:
        if isinstance(node, DataNode):
            new = self.visit_data_node(node, where)
            if isinstance(new, TaskRef):
                # the inner key must still exist: point it at the hoisted key
                return Alias(key, new.key)
            return new
        if isinstance(node, Task):
            return self.visit_task(node, where)
        return node

    def _visit_tuple(self, values: tuple[Any, ...], where: str) -> tuple[Any, ...]:
        """The values visited; the same tuple object if none changed."""
        new = tuple([self.visit_value(v, where) for v in values])
        if all(n is o for n, o in zip(new, values)):
            return values
        return new

    def _visit_dict(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        if not values:
            return values
        new = {k: self.visit_value(v, where) for k, v in values.items()}
        if all(new[k] is v for k, v in values.items()):
            return values
        return new


def _rebuilt(task: Task, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
    """A new task like ``task`` (same type, key and extra slots) with new contents."""
    extras = {name: getattr(task, name) for name in _extra_slots(type(task))}
    return type(task)(task.key, func, *args, **kwargs, **extras)


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

