"""Stage 3: rewrite the tasks that carry hoisted contents to reference one key each.

>>> from dask._task_spec import Task
>>> from dedupgraph.candidates import find_candidates
>>> from dedupgraph.fingerprint import FingerprintMemo
>>> from dedupgraph.plan import plan_hoists
>>> from dedupgraph.settings import Settings
>>> big = list(range(50_000))
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> found = find_candidates(graph, FingerprintMemo(min_bytes=1024))
>>> new = rewrite_graph(graph, plan_hoists(found, Settings(min_bytes=1024)), found)
>>> sorted(new["a"].dependencies) == sorted(k for k in new if k.startswith("dedup-list-"))
True
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task, TaskRef

from dedupgraph.candidates import Candidates
from dedupgraph.fingerprint import FingerprintMemo
from dedupgraph.plan import Plan
from dedupgraph.transform import SUBGRAPH, TaskTransformer


class _Hoister(TaskTransformer):
    """Replaces every hoisted leaf with a reference to its key."""

    def __init__(self, refs: Mapping[str, TaskRef], memo: FingerprintMemo) -> None:
        self.refs = refs
        # stage 1 fingerprinted every leaf of the graph: identity finds them again
        self.digests = memo.ids_with_digest(refs)
        self.used: set[str] = set()
        # nested tasks may be shared between fused tasks: rewrite each once
        self._done: dict[int, tuple[Task, GraphNode]] = {}

    def visit_leaf(self, value: Any, where: str) -> Any:
        digest = self.digests.get(id(value))
        if digest is None:
            return value
        self.used.add(digest)
        return self.refs[digest]

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
) -> dict[Hashable, GraphNode]:
    """A new graph dict: carrying tasks rewritten, all other tasks the same objects.

    By default each hoisted content becomes a ``DataNode`` under its key.  With
    ``references`` (digest -> ``TaskRef``, e.g. a distributed ``Future`` of
    already scattered data) tasks reference those instead and no node is added.
    """
    own_keys = references is None
    refs = references if references is not None else {d: TaskRef(h.key) for d, h in plan.hoists.items()}
    hoister = _Hoister(refs, candidates.memo)
    hoister.visit_subgraph_inner = any(SUBGRAPH in candidates.positions[d] for d in plan.hoists)
    carriers = {key for hoist in plan.hoists.values() for key in hoist.tasks}
    out = dict(graph)
    for key in carriers:
        out[key] = hoister.visit_node(graph[key])
    if own_keys:
        for digest in hoister.used:
            hoist = plan.hoists[digest]
            out[hoist.key] = DataNode(hoist.key, hoist.value)
    return out
