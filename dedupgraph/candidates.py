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
    #: digest -> where in the tasks it sits (``transform.ARGUMENT``, ``FUNCTION``, ...)
    positions: dict[str, set[str]] = field(default_factory=dict)


class _CandidateFinder(TaskTransformer):
    """Records the fingerprint of every large leaf; changes nothing."""

    def __init__(self, memo: FingerprintMemo, record_from_bytes: int) -> None:
        self.memo = memo
        self.record_from_bytes = record_from_bytes
        self.found: dict[str, tuple[Fingerprint, Any, set[str]]] = {}

    def visit_leaf(self, value: Any, where: str) -> Any:
        fp = self.memo.fingerprint(value)
        if fp is not None and fp.nbytes >= self.record_from_bytes:
            found = self.found.get(fp.digest)
            if found is None:
                self.found[fp.digest] = (fp, value, {where})
            else:
                found[2].add(where)
        return value


def find_candidates(
    graph: Mapping[Key, GraphNode], memo: FingerprintMemo, record_from_bytes: int | None = None
) -> Candidates:
    """Fingerprint every leaf of every task in ``graph`` (a dict of ``GraphNode``s).

    Contents below ``record_from_bytes`` (default: ``memo.min_bytes``) are not recorded.
    """
    result = Candidates(memo)
    floor = memo.min_bytes if record_from_bytes is None else record_from_bytes
    finder = _CandidateFinder(memo, floor)
    for key, node in graph.items():
        finder.visit_node(node)
        if not finder.found:
            continue
        for digest, (fp, value, where) in finder.found.items():
            if digest not in result.fingerprints:
                result.fingerprints[digest] = fp
                result.values[digest] = value
                result.keys[digest] = []
                result.positions[digest] = set()
            result.keys[digest].append(key)
            result.positions[digest] |= where
        finder.found = {}
    return result
