"""One traversal over every kind of value a dask task can hold.

>>> from dask._task_spec import Task, TaskRef
>>> class Doubler(TaskTransformer):
...     def visit_leaf(self, value):
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


class TaskTransformer:
    """Visit every value in a task; rebuild only the nodes whose leaves change.

    Override :meth:`visit_leaf`.  Each instance serves one pass over one graph.
    """

    def visit_node(self, node: GraphNode) -> GraphNode:
        """A top-level graph entry.  ``DataNode``s and ``Alias``es there are keys already."""
        if isinstance(node, Task):
            return self.visit_task(node)
        return node

    def visit_leaf(self, value: Any) -> Any:
        """A Python value carried by a task; return a replacement (e.g. a ``TaskRef``) or ``value``."""
        return value

    def visit_value(self, value: Any) -> Any:
        """Any value found inside a task."""
        if isinstance(value, TaskRef):
            return value
        if isinstance(value, GraphNode):
            if isinstance(value, Task):
                return self.visit_task(value)
            if isinstance(value, DataNode):
                return self.visit_data_node(value)
            return value  # Alias and node types we do not know stay as they are
        if type(value) in _PLAIN_CONTAINERS and len(value) <= SMALL_CONTAINER_LEN:
            return self.visit_plain_container(value)
        return self.visit_leaf(value)

    def visit_task(self, task: Task) -> GraphNode:
        if isinstance(task, NestedContainer):
            return self.visit_container_task(task)
        if task.func is _execute_subgraph:
            return self.visit_subgraph_task(task)
        func = self.visit_function(task.func)
        args = self._visit_tuple(task.args)
        kwargs = self._visit_dict(task.kwargs)
        if func is task.func and args is task.args and kwargs is task.kwargs:
            return task
        if func is not task.func:
            args = (func, *args)
            func = call
        return _rebuilt(task, func, args, kwargs)

    def visit_function(self, func: Callable[..., Any]) -> Any:
        # A coroutine function called through ``call`` would not be awaited.
        new = self.visit_leaf(func)
        if new is not func and inspect.iscoroutinefunction(func):
            return func
        return new

    def visit_data_node(self, node: DataNode) -> Any:
        """An inline ``DataNode`` (as fused tasks carry their literal inputs)."""
        new = self.visit_leaf(node.value)
        if new is node.value:
            return node
        if isinstance(new, (TaskRef, GraphNode)):
            return new
        return DataNode(node.key, new)

    def visit_container_task(self, task: NestedContainer) -> GraphNode:
        args = self._visit_tuple(task.args)
        if args is task.args:
            return task
        return _container_task(type(task), args)

    def visit_plain_container(self, value: list | tuple | dict | set) -> Any:
        if isinstance(value, dict):
            new_values = self._visit_tuple(tuple(value.values()))
            if all(n is o for n, o in zip(new_values, value.values())):
                return value
            flat = [x for pair in zip(value.keys(), new_values) for x in pair]
            return Dict(*flat)
        items = tuple(value)
        new_items = self._visit_tuple(items)
        if new_items is items:
            return value
        return _container_task(_CONTAINER_TASKS[type(value)], new_items)

    def visit_subgraph_task(self, task: Task) -> GraphNode:
        """A fused task: ``_execute_subgraph(inner_dsk, outkey, inkeys, *deps)``."""
        inner, outkey, inkeys = task.args[:3]
        deps = task.args[3:]
        new_inner = {key: self._visit_inner(key, node) for key, node in inner.items()}
        new_deps = self._visit_tuple(deps)
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

    def _visit_inner(self, key: Any, node: Any) -> Any:
        if not isinstance(node, GraphNode):
            return node
        if isinstance(node, DataNode):
            new = self.visit_data_node(node)
            if isinstance(new, TaskRef):
                # the inner key must still exist: point it at the hoisted key
                return Alias(key, new.key)
            return new
        return self.visit_node(node)

    def _visit_tuple(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The values visited; the same tuple object if none changed."""
        new = tuple(self.visit_value(v) for v in values)
        if all(n is o for n, o in zip(new, values)):
            return values
        return new

    def _visit_dict(self, values: dict[str, Any]) -> dict[str, Any]:
        if not values:
            return values
        new = {k: self.visit_value(v) for k, v in values.items()}
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

