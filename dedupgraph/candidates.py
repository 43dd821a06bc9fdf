"""Stage 1: find and fingerprint the large values that tasks carry.

>>> from dask._task_spec import Task
>>> big = list(range(50_000))
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> found = find_candidates(graph, FingerprintMemo(min_bytes=1024))
>>> [(fp.label, found.keys[fp.digest]) for fp in found.fingerprints.values()]
[('list', ['a', 'b'])]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import GraphNode

from dedupgraph.fingerprint import Fingerprint, FingerprintMemo
from dedupgraph.transform import TaskTransformer

Key = Hashable


@dataclass
class Candidates:
    """Every distinct large content in a graph, and the tasks that carry it."""

    memo: FingerprintMemo
    #: digest -> fingerprint, for contents of at least ``memo.min_bytes``
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    #: digest -> the first object seen with that content (the one that gets hoisted)
    values: dict[str, Any] = field(default_factory=dict)
    #: digest -> keys of the top-level tasks that carry it, each task once
    keys: dict[str, list[Key]] = field(default_factory=dict)


class _CandidateFinder(TaskTransformer):
    """Records the fingerprint of every large leaf; changes nothing."""

    def __init__(self, memo: FingerprintMemo) -> None:
        self.memo = memo
        self.found: dict[str, tuple[Fingerprint, Any]] = {}

    def visit_leaf(self, value: Any) -> Any:
        fp = self.memo.fingerprint(value)
        if fp is not None and fp.nbytes >= self.memo.min_bytes:
            self.found.setdefault(fp.digest, (fp, value))
        return value


def find_candidates(graph: Mapping[Key, GraphNode], memo: FingerprintMemo) -> Candidates:
    """Fingerprint every leaf of every task in ``graph`` (a dict of ``GraphNode``s)."""
    result = Candidates(memo)
    finder = _CandidateFinder(memo)
    for key, node in graph.items():
        finder.visit_node(node)
        if not finder.found:
            continue
        for digest, (fp, value) in finder.found.items():
            if digest not in result.fingerprints:
                result.fingerprints[digest] = fp
                result.values[digest] = value
                result.keys[digest] = []
            result.keys[digest].append(key)
        finder.found = {}
    return result
