"""Stage 3: rewrite the tasks that carry hoisted contents to reference one key each.

>>> from dask._task_spec import Task
>>> from dedupgraph.core.candidates import find_candidates
>>> from dedupgraph.core.fingerprint import FingerprintMemo
>>> from dedupgraph.core.plan import plan_hoists
>>> from dedupgraph.settings import Settings
>>> big = list(range(50_000))
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> found = find_candidates(graph, FingerprintMemo(min_bytes=1024))
>>> new = rewrite_graph(graph, plan_hoists(found, Settings(min_bytes=1024)), found)
>>> sorted(new["a"].dependencies) == sorted(k for k in new if k.startswith("dedup-list-"))
True
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from typing import Any

from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, Tuple, _execute_subgraph

from dedupgraph.core.candidates import Candidates
from dedupgraph.core.immutability import is_immutable
from dedupgraph.core.plan import Hoist, Plan
from dedupgraph.core.runtime import call_guarded, received
from dedupgraph.core.transform import SUBGRAPH, TaskTransformer, is_container_task_type, rebuilt

#: Where a route stores a hoist in shared memory, which tasks receive read-only
#: (``share="host"``): (the node under its own key, the node carrying tasks get
#: instead of the object), or None for a plain ``DataNode``.
Place = Callable[[Hoist], "tuple[GraphNode, GraphNode] | None"]


class _Hoister(TaskTransformer):
    """Replaces every hoisted leaf with a reference to its key."""

    def __init__(self, refs: Mapping[str, TaskRef], group_of: Mapping[int, str]) -> None:
        self.refs = refs
        # stage 1 recorded every large leaf of the graph: identity finds them again
        self.groups = {ident: group for ident, group in group_of.items() if group in refs}
        self.used: set[str] = set()
        # nested tasks may be shared between fused tasks: rewrite each once
        self._done: dict[int, tuple[Task, GraphNode]] = {}

    def visit_leaf(self, value: Any, where: str) -> Any:
        group = self.groups.get(id(value))
        if group is None:
            return value
        self.used.add(group)
        return self.refs[group]

    def visit_task(self, task: Task, where: str | None = None) -> GraphNode:
        if where is None:  # a top-level entry: never shared, nothing to remember
            return super().visit_task(task)
        # the rewritten node does not depend on ``where``, only reports would
        done = self._done.get(id(task))
        if done is not None:
            return done[1]
        new = super().visit_task(task, where)
        self._done[id(task)] = (task, new)
        return new


def rewrite_graph(
    graph: Mapping[Hashable, GraphNode],
    plan: Plan,
    candidates: Candidates,
    references: Mapping[str, TaskRef] | None = None,
    place: Place | None = None,
    check_mutation: bool = False,
    read_only: Collection[str] = (),
) -> dict[Hashable, GraphNode]:
    """A new graph dict: carrying tasks rewritten, all other tasks the same objects.

    By default each hoisted content becomes a ``DataNode`` under its key.  With
    ``references`` (group -> ``TaskRef``, e.g. a distributed ``Future`` of
    already scattered data) tasks reference those instead and no node is added.
    ``place`` (from a route, ``dedupgraph.placement.in_graph``) may put a hoist
    in shared memory: it returns (the node to add, under its own key; the node
    that carrying tasks get instead of the object), or None for the default.

    ``check_mutation``: each carrying task that receives a mutable hoisted
    object checks, through ``dedupgraph.core.runtime``, whether its function
    changed it.  The groups that ``place`` placed, and those in ``read_only``
    (shared-memory objects among ``references``), are received read-only: a
    write into them raises an error that says so.
    """
    own_keys = references is None
    placed: dict[str, tuple[GraphNode, GraphNode]] = {}
    if own_keys and place is not None:
        placed = {g: p for g, h in plan.hoists.items() if (p := place(h)) is not None}
    refs = references if references is not None else {
        g: placed[g][1] if g in placed else TaskRef(h.key) for g, h in plan.hoists.items()
    }
    hoister = _Hoister(refs, candidates.group_of)
    hoister.visit_subgraph_inner = any(SUBGRAPH in candidates.positions[d] for d in plan.hoists)
    carriers = {key for hoist in plan.hoists.values() for key in hoist.tasks}
    # with neither, carrying tasks are exactly what they were before the check existed
    guard = Guard(plan, refs, check_mutation, {*placed, *read_only}) if check_mutation or placed or read_only else None
    out = dict(graph)
    for key in carriers:
        new = hoister.visit_node(graph[key])
        out[key] = guard.wrapped(new) if guard else new
    if own_keys:
        for group in hoister.used:
            hoist = plan.hoists[group]
            node = placed[group][0] if group in placed else DataNode(hoist.key, hoist.value)
            out[node.key] = node
    return out


class Guard:
    """Wraps the tasks that receive a hoisted object, where needed, in ``call_guarded(received(...), func, *args)``.

    >>> big = bytearray(100_000)
    >>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
    >>> from dedupgraph.core.candidates import find_candidates
    >>> from dedupgraph.core.fingerprint import FingerprintMemo
    >>> from dedupgraph.core.plan import plan_hoists
    >>> from dedupgraph.settings import Settings
    >>> found = find_candidates(graph, FingerprintMemo(min_bytes=1024))
    >>> new = rewrite_graph(graph, plan_hoists(found, Settings(min_bytes=1024)), found, check_mutation=True)
    >>> new["a"].func.__name__, new["a"].args[0].args[0]
    ('call_guarded', 'builtins.len')

    A task needs it when it receives a hoisted object that is mutable and
    ``check_mutation`` is on, or one held in shared memory (``read_only``).
    In a fused task the inner tasks that receive the object are wrapped, each
    with its own function's name, so that the check names the function that
    changed the object and not the fused chain; their inner graph, which the
    fused tasks of one layer share, is rewritten once.  The name is the
    task's function, or the functions in its nested tasks and arguments that
    are not dask's own plumbing (``apply``, a bag's ``map_chunk``).
    """

    def __init__(self, plan: Plan, refs: Mapping[str, Any], check_mutation: bool, read_only: Collection[str]) -> None:
        self.refs = refs
        self.by_key = {key: group for group, ref in refs.items() for key in _keys_of(ref)}
        self.watched = {g for g, h in plan.hoists.items() if g in refs and not is_immutable(h.value)} if check_mutation else set()
        self.read_only = set(read_only) & set(refs)
        self.callables = {key: plan.hoists[g].value for key, g in self.by_key.items() if callable(plan.hoists[g].value)}
        # fused tasks of one layer share their inner graph: each is rewritten once (the
        # entry holds the old graph too, so that its id is not reused while the memo lives)
        self._inner: dict[tuple[int, frozenset[tuple[Hashable, str]]], tuple[Any, dict[Hashable, Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self.watched or self.read_only)

    def wrapped(self, node: GraphNode) -> GraphNode:
        """A carrying task, guarded where it (or a fused task's inner task) receives an object that needs it."""
        return self._wrapped(node, self.by_key, lambda group, key: self.refs[group])

    def _wrapped(self, node: Any, by_key: Mapping[Hashable, str], ref: Callable[[str, Hashable], Any]) -> Any:
        """``node`` guarded for the keys in ``by_key`` (key -> group) it depends on; ``ref`` gives a key's reference."""
        if not isinstance(node, Task) or is_container_task_type(type(node)) or inspect.iscoroutinefunction(node.func):
            return node  # a container calls nothing; a coroutine function's task is awaited by distributed
        if node.func is _execute_subgraph:
            return self._fused(node, by_key)
        received_keys = {key: by_key[key] for key in sorted(node.dependencies & by_key.keys(), key=str)}
        watched = [ref(g, key) for key, g in received_keys.items() if g in self.watched]
        shared = [ref(g, key) for key, g in received_keys.items() if g in self.read_only]
        if not watched and not shared:
            return node
        names = [qualified_name(f) for f in self._callables(node) if not _is_plumbing(f)]
        name = ", ".join(dict.fromkeys(names)) or qualified_name(node.func)
        receipt = Task(None, received, name, _tuple(watched), _tuple(shared))
        return rebuilt(node, call_guarded, (receipt, node.func, *node.args), node.kwargs)

    def _fused(self, node: Task, by_key: Mapping[Hashable, str]) -> Task:
        """A fused task whose inner tasks that receive a hoisted object (through its inputs) are guarded."""
        inner, outkey, inkeys = node.args[:3]
        slots = {key: by_key[k] for key, dep in zip(inkeys, node.args[3:]) for k in _keys_of(dep) if k in by_key}
        for key, dep in inner.items():  # an inner input hoisted in place is an alias of the hoisted key
            if isinstance(dep, Alias) and dep.target in slots:
                slots[key] = slots[dep.target]
        if not slots:
            return node
        memo = (id(inner), frozenset(slots.items()))
        if memo not in self._inner:
            inside = lambda group, key: TaskRef(key)  # noqa: E731  (the inner graph's own name for the input)
            self._inner[memo] = (inner, {key: self._wrapped(task, slots, inside) for key, task in inner.items()})
        new_inner = self._inner[memo][1]
        if all(new_inner[key] is task for key, task in inner.items()):
            return node
        return rebuilt(node, node.func, (new_inner, outkey, inkeys, *node.args[3:]), node.kwargs)

    def _callables(self, node: Task) -> Iterator[Any]:
        if not is_container_task_type(type(node)):
            yield node.func
        for value in (*node.args, *node.kwargs.values()):
            if isinstance(value, Task):
                yield from self._callables(value)
            elif isinstance(value, TaskRef) and value.key in self.callables:
                yield self.callables[value.key]  # a hoisted function, called through ``call``
            elif callable(value) and not isinstance(value, (type, GraphNode, TaskRef)):
                yield value


def _keys_of(ref: Any) -> frozenset[Hashable]:
    """The hoisted keys a reference (a ``TaskRef``, or a node that unwraps one) stands for."""
    if isinstance(ref, TaskRef):
        return frozenset({ref.key})
    return frozenset(ref.dependencies) if isinstance(ref, GraphNode) else frozenset()


def _tuple(nodes: list[Any]) -> Any:
    return Tuple(*nodes) if nodes else ()


# Functions of these packages are dask's plumbing around the user's function
# (``apply``, ``map_chunk``, ``reify``, ``repeat``): not the ones to name.
_PLUMBING = frozenset({"dask", "distributed", "dedupgraph", "toolz", "tlz", "cytoolz", "builtins", "itertools", "operator", "functools", "_operator", "_functools"})


def _is_plumbing(func: Any) -> bool:
    return qualified_name(func).split(".")[0] in _PLUMBING


def qualified_name(func: Any) -> str:
    """``module.QualName`` of a function, a method, a ``partial``'s function, or a callable's type.

    >>> qualified_name(functools.partial(max, 1)), qualified_name(str.upper), qualified_name(qualified_name)
    ('builtins.max', 'builtins.str.upper', 'dedupgraph.core.rewrite.qualified_name')
    >>> qualified_name(Hoist), qualified_name(_execute_subgraph)
    ('dedupgraph.core.plan.Hoist', 'dask._task_spec._execute_subgraph')
    """
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None) or getattr(getattr(func, "__objclass__", None), "__module__", None)
    if not isinstance(qualname, str):  # a callable instance: its type
        typ = type(func)
        return f"{typ.__module__}.{typ.__qualname__}"
    return f"{module}.{qualname}" if isinstance(module, str) else qualname  # exec'd code may have no module
