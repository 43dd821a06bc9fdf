"""Stage 1: find and fingerprint the large values that tasks carry.

>>> from dask._task_spec import Task
>>> big = list(range(50_000))
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> found = find_candidates(graph, FingerprintMemo(min_bytes=1024))
>>> [(group[-2:], fp.label, found.keys[group]) for group, fp in found.fingerprints.items()]
[(':0', 'list', ['a', 'b'])]

Contents are grouped: one group per object, except that objects which
``may_merge`` share one group per content digest (named by the digest).
A group is what stage 2 hoists into one key.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash
from dask._task_spec import GraphNode

from dedupgraph.core.fingerprint import SMALL, Fingerprint, FingerprintMemo, is_obviously_small
from dedupgraph.core.transform import SubgraphLeaves, walk_leaves

Key = Hashable


@dataclass
class Candidates:
    """Every large object in a graph, grouped as they may share a key, and the tasks that carry them.

    A group is named by its content digest when it gathers every object of
    that content that may merge, and ``"<digest>:<n>"`` when it holds the
    n-th object of that content that may not (see ``dedupgraph.core.immutability``).
    """

    memo: FingerprintMemo
    #: group -> fingerprint, for contents of at least ``memo.min_bytes``
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    #: group -> the first object seen in it (the one that gets hoisted)
    values: dict[str, Any] = field(default_factory=dict)
    #: group -> keys of the top-level tasks that carry it, each task once
    keys: dict[str, list[Key]] = field(default_factory=dict)
    #: group -> where in the tasks it sits (``transform.ARGUMENT``, ``FUNCTION``, ...)
    positions: dict[str, set[str]] = field(default_factory=dict)
    #: id of every recorded object -> its group (the rewrite finds objects by identity)
    group_of: dict[int, str] = field(default_factory=dict)
    #: digest -> its groups, for contents held by more than one group (equal copies kept apart)
    apart: dict[str, list[str]] = field(default_factory=dict)
    #: group -> the index, among the objects of its content that one task carries,
    #: of its object in the first task that carries it (for a stable key)
    ordinal: dict[str, int] = field(default_factory=dict)
    #: with ``record_inline``: id -> an object left inline by stage 1 (unpicklable,
    #: excluded), the keys of the tasks that carry it and where; by identity, as
    #: such objects have no content digest
    inline: dict[int, InlineObject] = field(default_factory=dict)


def same_objects_signature(value: Any) -> tuple[int, ...] | None:
    """Identities that make ``value`` interchangeable with any other wrapper of the same objects.

    >>> class Model:
    ...     def predict(self, x):
    ...         return x
    >>> m = Model()
    >>> m.predict is m.predict, same_objects_signature(m.predict) == same_objects_signature(m.predict)
    (False, True)

    Every ``obj.method`` access builds a new bound method, yet all of them call
    the same function on the same object: sharing one of them changes nothing,
    whatever that object is.  Likewise ``functools.partial``s of the same
    function and the same arguments.  Other values: None.
    """
    if isinstance(value, types.MethodType):
        return (id(value.__func__), id(value.__self__))
    if type(value) is functools.partial:
        return (id(value.func), *map(id, value.args), *(x for k, v in value.keywords.items() for x in (hash(k), id(v))))
    return None


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
    may_merge: Callable[[Any], bool] = lambda value: False,
    min_carriers: int = 1,
) -> Candidates:
    """Fingerprint every leaf of every task in ``graph`` (a dict of ``GraphNode``s).

    Contents below ``record_from_bytes`` (default: ``memo.min_bytes``) are not
    recorded.  ``record_inline`` also records, by identity, the objects that
    the memo leaves without a fingerprint although not obviously small.
    ``may_merge``: whether an object may share a group with equal objects
    (``immutability.merge_policy``); by default each object is its own group.

    ``min_carriers`` (``min-count``): an object that fewer tasks carry, and
    that no equal object could join (see :func:`carrier_token`), can never
    be hoisted, so it is neither pickled nor recorded: a graph whose every
    task carries its own medium object then costs a count, not a pickle each.
    """
    floor = memo.min_bytes if record_from_bytes is None else record_from_bytes
    recorded = (
        None if min_carriers <= 1 or record_inline else _leaves_worth_recording(graph, memo, floor, may_merge, min_carriers)
    )
    result = Candidates(memo)
    # per task: group -> (fingerprint, value, positions); each task counts once
    found: dict[str, tuple[Fingerprint, Any, set[str]]] = {}
    # per digest: how many objects of that content have their own group so far
    separate: dict[str, int] = {}
    # per task: digest -> how many of its objects of that content were seen
    seen_in_task: dict[str, int] = {}

    # (digest, identity signature) -> group: wrappers of the very same objects
    wrapping: dict[tuple[str, tuple[int, ...]], str] = {}

    def group_for(value: Any, fp: Fingerprint) -> str:
        group = result.group_of.get(id(value))
        if group is None:
            signature = same_objects_signature(value)
            if may_merge(value):
                group = fp.digest
            elif signature is not None and (fp.digest, signature) in wrapping:
                group = wrapping[fp.digest, signature]
            else:
                group = f"{fp.digest}:{separate.get(fp.digest, 0)}"
                separate[fp.digest] = separate.get(fp.digest, 0) + 1
                if signature is not None:
                    wrapping[fp.digest, signature] = group
            result.group_of[id(value)] = group
            # counted in the first task that carries the group only: with that
            # task's key, it names the group's key, so it must not change later
            result.ordinal.setdefault(group, seen_in_task.get(fp.digest, 0))
            groups = result.apart.setdefault(fp.digest, [])
            if group not in groups:
                groups.append(group)
        seen_in_task[fp.digest] = seen_in_task.get(fp.digest, 0) + 1
        return group

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
        group = group_for(value, fp)
        seen = found.get(group)
        if seen is None:
            found[group] = (fp, value, {where})
        else:
            seen[2].add(where)

    # fused tasks of one layer share their inner graph: walked once (see walk_leaves)
    subgraphs: SubgraphLeaves = {}
    for key, node in graph.items():
        if recorded is None:
            walk_leaves(node, record, judged, subgraphs)
        else:
            for value, where in recorded.get(key, ()):
                record(value, where)
        if not found and not found_inline:
            continue
        for group, (fp, value, where) in found.items():
            if group not in result.fingerprints:
                result.fingerprints[group] = fp
                result.values[group] = value
                result.keys[group] = []
                result.positions[group] = set()
            result.keys[group].append(key)
            result.positions[group] |= where
        for ident, where in found_inline.items():
            result.inline[ident].keys.append(key)
            result.inline[ident].positions |= where
        found.clear()
        found_inline.clear()
        seen_in_task.clear()
    result.apart = {digest: groups for digest, groups in result.apart.items() if len(groups) > 1}
    return result


# Bytes hashed at each end of a buffer for its token: equal buffers always get
# equal tokens, and distinct ones of the same length almost never share their
# ends; where they do, they are only fingerprinted, as without a token.
_SAMPLED_BYTES = 256


def carrier_token(value: Any, may_merge: Callable[[Any], bool]) -> int | None:
    """What tells apart the objects that could share a group with ``value``: None if anything could.

    >>> import numpy as np
    >>> a = np.zeros(3000)
    >>> carrier_token(a, lambda v: False) == id(a)  # may not merge: only the object itself
    True
    >>> carrier_token(b"x" * 9000, bool) == carrier_token(b"x" * 9000, bool)  # equal content, one token
    True
    >>> carrier_token([1, 2], bool) is None  # may merge, no cheap content hash: always fingerprinted
    True

    An object that may not merge can only be carried by the tasks that hold
    it; ``bytes``, ``str`` and read-only arrays that may, only by those that
    hold equal bytes: their length and a hash of their ends (much cheaper
    than a pickle), equal for equal content.  Bound methods and partials
    group by what they wrap, and anything else that may merge needs its
    pickle: None.  Tokens are plain ints, which the garbage collector does
    not track: tuples held for every object of a large graph would bring on
    full collections in the work that follows.  Two objects whose tokens
    collide are only counted together, and then fingerprinted.
    """
    typ = type(value)
    if typ is bytes or typ is str or typ is np.ndarray:  # by exact type: never methods or partials
        if not may_merge(value):
            return id(value)
        if typ is bytes:
            return _ends_hash(value, len(value))
        if typ is str:
            return hash(value)
        if not value.dtype.hasobject and value.flags.c_contiguous:
            return _ends_hash(value.reshape(-1).view(np.uint8), hash((value.dtype.str, value.shape)) % 2**64)
        return None
    if same_objects_signature(value) is not None:
        return None
    return None if may_merge(value) else id(value)


def _ends_hash(buffer: Any, seed: int) -> int:
    """A hash of the first and last ``_SAMPLED_BYTES`` of a contiguous buffer of bytes, and of ``seed``."""
    if len(buffer) <= 2 * _SAMPLED_BYTES:
        return xxhash.xxh3_64_intdigest(buffer, seed)
    hasher = xxhash.xxh3_64(buffer[:_SAMPLED_BYTES], seed)
    hasher.update(buffer[-_SAMPLED_BYTES:])
    return hasher.intdigest()


_UNSEEN = object()  # not a token: CarrierCounts.tokens holds ints and None


class CarrierCounts:
    """How many tasks of one graph could carry each leaf seen so far, by :func:`carrier_token`.

    >>> counts = CarrierCounts(FingerprintMemo(min_bytes=1024), may_merge=lambda value: False)
    >>> table = list(range(1_000))
    >>> counts.add(table), counts.add(table), counts.add(3), counts.of(table)
    (1, 2, 0, 2)

    One per walk over one graph (the graph holds every leaf for the whole
    walk, so identities stay unique).  ``skip``: identities a walk need not
    visit again, obviously small ones and those the caller judged.  A leaf
    whose token is its identity (most of them) is kept in ``counts`` alone:
    an entry less per leaf, as a graph may carry one per task.
    """

    def __init__(self, memo: FingerprintMemo, may_merge: Callable[[Any], bool]) -> None:
        self.memo = memo
        self.may_merge = may_merge
        self.tokens: dict[int, int | None] = {}  # identity -> token, for tokens other than the identity
        self.counts: dict[int, int] = {}  # token -> count
        self.skip: set[int] = set()

    def add(self, value: Any) -> int | None:
        """Count ``value`` once more: its count so far; 0 if obviously small (then skipped); None if it has no token."""
        ident = id(value)
        counts = self.counts
        token = self.tokens.get(ident, _UNSEEN)
        if token is _UNSEEN:
            if ident in counts:  # seen, its token its identity
                token = ident
            elif is_obviously_small(value, self.memo.min_bytes):
                self.skip.add(ident)
                return 0
            else:
                token = carrier_token(value, self.may_merge)
                if token != ident:
                    self.tokens[ident] = token
        if token is None:
            return None
        count = counts[token] = counts.get(token, 0) + 1
        return count

    def of(self, value: Any) -> int | None:
        """The count of a value counted before; None if it has no token."""
        ident = id(value)
        token = self.tokens.get(ident, ident)
        return None if token is None else self.counts[token]


def _leaves_worth_recording(
    graph: Mapping[Key, GraphNode],
    memo: FingerprintMemo,
    floor: int,
    may_merge: Callable[[Any], bool],
    min_carriers: int,
) -> dict[Key, list[tuple[Any, str]]]:
    """Per task, the leaves the recording walk would record, less those fewer than ``min_carriers`` tasks could share.

    One walk, in the order of the recording walk, that counts: the leaves it
    keeps are then recorded exactly as if the graph were walked.  What may
    merge without a token (functions, tuples...) is fingerprinted at once, as
    the recording walk would, so that one found small is skipped from then on.
    """
    leaves: dict[Key, list[tuple[Any, str]]] = {}
    carriers = CarrierCounts(memo, may_merge)
    subgraphs: SubgraphLeaves = {}
    current: list[tuple[Any, str]] = []

    def collect(value: Any, where: str) -> None:
        first = id(value) not in carriers.tokens  # told only of values without a token: all in ``tokens``
        count = carriers.add(value)
        if count == 0:
            return
        if count is None and first:
            fp = memo.fingerprint(value)
            if fp is None or fp.nbytes < floor:
                carriers.skip.add(id(value))  # not recorded, as the recording walk judges it
                return
        current.append((value, where))

    for key, node in graph.items():
        walk_leaves(node, collect, carriers.skip, subgraphs)
        if current:
            leaves[key] = current
            current = []
    for key, found in leaves.items():
        leaves[key] = [
            (value, where) for value, where in found if (count := carriers.of(value)) is None or count >= min_carriers
        ]
    return leaves
