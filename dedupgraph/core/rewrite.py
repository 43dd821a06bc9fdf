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

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task, TaskRef

from dedupgraph.core.candidates import Candidates
from dedupgraph.core.plan import Hoist, Plan
from dedupgraph.core.transform import SUBGRAPH, TaskTransformer

#: Where a route stores a hoist: (the node under its own key, the node carrying
#: tasks get instead of the object), or None for a plain ``DataNode``.
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
) -> dict[Hashable, GraphNode]:
    """A new graph dict: carrying tasks rewritten, all other tasks the same objects.

    By default each hoisted content becomes a ``DataNode`` under its key.  With
    ``references`` (group -> ``TaskRef``, e.g. a distributed ``Future`` of
    already scattered data) tasks reference those instead and no node is added.
    ``place`` (from ``dedupgraph.placement.in_graph``) may put a hoist
    elsewhere: it returns (the node to add, under its own key; the node that
    carrying tasks get instead of the object), or None for the default.
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
    out = dict(graph)
    for key in carriers:
        out[key] = hoister.visit_node(graph[key])
    if own_keys:
        for group in hoister.used:
            hoist = plan.hoists[group]
            node = placed[group][0] if group in placed else DataNode(hoist.key, hoist.value)
            out[node.key] = node
    return out
