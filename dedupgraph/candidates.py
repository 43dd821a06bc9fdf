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

from dedupgraph.fingerprint import SMALL, Fingerprint, FingerprintMemo
from dedupgraph.transform import walk_leaves

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
    #: with ``record_inline``: id -> an object left inline by stage 1 (unpicklable,
    #: excluded), the keys of the tasks that carry it and where; by identity, as
    #: such objects have no content digest
    inline: dict[int, InlineObject] = field(default_factory=dict)


@dataclass
class InlineObject:
    value: Any
    reason: str  # fingerprint.UNPICKLABLE or fingerprint.EXCLUDED
    keys: list[Key] = field(default_factory=list)
    positions: set[str] = field(default_factory=set)


def find_candidates(
    graph: Mapping[Key, GraphNode],
    memo: FingerprintMemo,
    record_from_bytes: int | None = None,
    record_inline: bool = False,
) -> Candidates:
    """Fingerprint every leaf of every task in ``graph`` (a dict of ``GraphNode``s).

    Contents below ``record_from_bytes`` (default: ``memo.min_bytes``) are not
    recorded.  ``record_inline`` also records, by identity, the objects that
    the memo leaves without a fingerprint although not obviously small.
    """
    result = Candidates(memo)
    floor = memo.min_bytes if record_from_bytes is None else record_from_bytes
    # per task: digest -> (fingerprint, value, positions); each task counts once
    found: dict[str, tuple[Fingerprint, Any, set[str]]] = {}
    # per task, with record_inline: id -> positions
    found_inline: dict[int, set[str]] = {}
    # ids of leaves judged not worth recording: the walk skips them from then on
    judged: set[int] = set()

    def record(value: Any, where: str) -> None:
        fp = memo.fingerprint(value)
        if fp is None and record_inline:
            reason = memo.why_inline(value)
            if reason is not None and reason != SMALL:
                if id(value) not in result.inline:
                    result.inline[id(value)] = InlineObject(value, reason)
                found_inline.setdefault(id(value), set()).add(where)
                return  # not judged: counted in every task that carries it
        if fp is None or fp.nbytes < floor:
            judged.add(id(value))  # the graph holds every leaf for the whole pass: ids stay unique
            return
        seen = found.get(fp.digest)
        if seen is None:
            found[fp.digest] = (fp, value, {where})
        else:
            seen[2].add(where)

    for key, node in graph.items():
        walk_leaves(node, record, judged)
        if not found and not found_inline:
            continue
        for digest, (fp, value, where) in found.items():
            if digest not in result.fingerprints:
                result.fingerprints[digest] = fp
                result.values[digest] = value
                result.keys[digest] = []
                result.positions[digest] = set()
            result.keys[digest].append(key)
            result.positions[digest] |= where
        for ident, where in found_inline.items():
            result.inline[ident].keys.append(key)
            result.inline[ident].positions |= where
        found.clear()
        found_inline.clear()
    return result
