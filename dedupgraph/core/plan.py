"""Stage 2: decide which contents to hoist, and under which key.

>>> from dedupgraph.core.fingerprint import Fingerprint
>>> hoisted_key(Fingerprint("0" * 32, 250_000, "Mapper"))
'dedup-Mapper-00000000000000000000000000000000'
>>> hoisted_key(Fingerprint("0" * 32, 250_000, "ndarray"), apart=("fill-1", 0))
'dedup-ndarray-00000000000000000000000000000000-52179d66'
>>> auto = Settings()  # min-bytes auto: the cost rule, above floor-bytes
>>> why_inline(250_000, 1, auto), why_inline(1_000, 50, auto), why_inline(5_000, 2, auto), why_inline(250_000, 50, auto)
('single use', 'below floor-bytes', 'saving below cost', None)
>>> why_inline(5_000, 2, Settings(min_bytes=4096)), why_inline(1_000, 50, Settings(min_bytes=4096))  # a pinned size
(None, 'below min-bytes')
"""

from __future__ import annotations

import logging
from collections.abc import Container, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash
from dask.utils import format_bytes

from dedupgraph.core.candidates import Candidates
from dedupgraph.core.fingerprint import EXCLUDED, Fingerprint
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")

# Why a content stays inline, besides stage 1's EXCLUDED and UNPICKLABLE.
BELOW_MIN_BYTES = "below min-bytes"  # smaller than a pinned min-bytes
BELOW_FLOOR = "below floor-bytes"  # min-bytes auto: smaller than floor-bytes
SAVING_BELOW_COST = "saving below cost"  # min-bytes auto: the added dependencies would cost more than it saves
SINGLE_USE = "single use"
BELOW_MIN_COUNT = "below min-count"  # carried by more than one task, but fewer than min-count

# What hoisting adds, in memory of the scheduler and the workers together: one
# more dependency for each carrying task, and one more key.  The first is
# bounded by measurement, the second chosen, as docs/benchmarks.rst ("Where
# hoisting pays", with the commands) says.
DEPENDENCY_BYTES = 1024
KEY_BYTES = 16 * 1024
# "Clearly exceeds": the saving must be this many times the cost, so that a
# content near the break-even, where the measurement cannot tell the two
# apart, stays as plain dask has it.
PAYS_FACTOR = 2

# Contents pickled smaller than this are neither reported nor logged one by
# one: they are mostly functions pickled by reference and small arguments,
# which every graph has by the thousand.
NOTABLE_BYTES = 1024


def hoisting_cost(ntasks: int) -> int:
    """Bytes of scheduler and worker memory that hoisting a content out of ``ntasks`` tasks adds.

    >>> hoisting_cost(1000) == 1000 * DEPENDENCY_BYTES + KEY_BYTES
    True
    """
    return ntasks * DEPENDENCY_BYTES + KEY_BYTES


def pays(nbytes: int, ntasks: int) -> bool:
    """Whether hoisting a content of ``nbytes`` out of ``ntasks`` tasks clearly saves more than it costs.

    >>> pays(8_000, 4000), pays(8_000, 2), pays(64_000, 2)
    (True, False, True)

    It saves every copy but one (``nbytes * (ntasks - 1)``); it costs
    :func:`hoisting_cost`.  For many tasks the rule tends to ``nbytes`` above
    ``PAYS_FACTOR * DEPENDENCY_BYTES``; for few, the new key's cost dominates.
    """
    return nbytes * (ntasks - 1) >= PAYS_FACTOR * hoisting_cost(ntasks)


def why_inline(nbytes: int, ntasks: int, settings: Settings) -> str | None:
    """Why a content of ``nbytes`` carried by ``ntasks`` tasks stays inline; None: it is hoisted."""
    if settings.min_bytes is not None and nbytes < settings.min_bytes:
        return BELOW_MIN_BYTES
    if settings.min_bytes is None and nbytes < settings.floor_bytes:
        return BELOW_FLOOR
    if ntasks < settings.min_count:
        return SINGLE_USE if ntasks == 1 else BELOW_MIN_COUNT
    # a single use saves nothing to weigh: with min-count 1 it is hoisted as asked
    if settings.min_bytes is None and ntasks > 1 and not pays(nbytes, ntasks):
        return SAVING_BELOW_COST
    return None


@dataclass(frozen=True)
class Hoist:
    """One content that becomes one graph key."""

    key: str
    fingerprint: Fingerprint
    tasks: tuple[Hashable, ...]
    value: Any = field(repr=False, compare=False)

    @property
    def saved_bytes(self) -> int:
        """Task payload no longer repeated: every copy but the one the key holds."""
        return self.fingerprint.nbytes * (len(self.tasks) - 1)


@dataclass(frozen=True)
class Summary:
    """What a plan hoists, in the numbers of the pass's INFO line and of a report's totals.

    >>> print(Summary(objects=1, nbytes=241_000, labels=("Mapper",), tasks=4000, saved_bytes=963_759_000).message())
    hoisted 1 object (235.35 kiB, Mapper) shared by 4000 tasks; 919.11 MiB of task payload saved
    """

    objects: int
    nbytes: int
    labels: tuple[str, ...]
    tasks: int
    saved_bytes: int

    def message(self, would: bool = False) -> str:
        """The pass's INFO line; ``would``: in the conditional, for dry runs and reports."""
        return (
            f"{'would hoist' if would else 'hoisted'} {self.objects} "
            f"object{'' if self.objects == 1 else 's'} ({format_bytes(self.nbytes)}, "
            f"{', '.join(self.labels)}) shared by {self.tasks} tasks; "
            f"{format_bytes(self.saved_bytes)} of task payload {'would be saved' if would else 'saved'}"
        )


@dataclass(frozen=True)
class Apart:
    """Equal copies of one content that ``merge-equal`` keeps in groups of their own.

    >>> print(Apart("ndarray", 800_128, copies=6, merge_saves=4_000_640).message("immutable"))
    kept 6 equal copies of ndarray (781.38 kiB) apart (merge-equal: immutable); merging them would save 3.82 MiB of task payload
    """

    label: str
    nbytes: int
    copies: int  #: distinct objects (groups) with this content
    merge_saves: int  #: task payload that one key for all of them would save beyond what the plan saves

    def message(self, merge_equal: str) -> str:
        return (
            f"kept {self.copies} equal copies of {self.label} ({format_bytes(self.nbytes)}) apart "
            f"(merge-equal: {merge_equal}); merging them would save {format_bytes(self.merge_saves)} of task payload"
        )


@dataclass(frozen=True)
class Plan:
    """Hoists by candidate group (see ``Candidates``), and the equal copies kept apart."""

    hoists: dict[str, Hoist]
    apart: tuple[Apart, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hoists)

    def summary(self) -> Summary:
        hoists = self.hoists.values()
        return Summary(
            objects=len(hoists),
            nbytes=sum(h.fingerprint.nbytes for h in hoists),
            labels=tuple(sorted({h.fingerprint.label for h in hoists})),
            tasks=len({t for h in hoists for t in h.tasks}),
            saved_bytes=sum(h.saved_bytes for h in hoists),
        )


def hoisted_key(fp: Fingerprint, apart: tuple[Hashable, int] | None = None) -> str:
    """The graph key of a hoisted content: the same bytes always give the same key.

    ``apart``: for one of several equal objects that ``merge-equal`` keeps
    apart in one graph, the key of the first task that carries it and its
    index among the objects of that content there: the key then names that
    object as dask's own keys name their tasks, and equal objects kept apart
    never meet under one key.
    """
    if apart is None:
        return f"dedup-{fp.label}-{fp.digest}"
    suffix = xxhash.xxh32_hexdigest(repr(apart).encode())
    return f"dedup-{fp.label}-{fp.digest}-{suffix}"


def group_key(candidates: Candidates, group: str) -> str:
    """The hoisted key of a candidate group: its content's key, unless equal copies are kept apart.

    The group of all the objects that may merge, and the only group of its
    content, take the content's key, which other graphs and other clients
    with the same content reuse on a cluster (sharing a key across graphs is
    what ``scatter`` does too; see the mutation caveat in the README).
    """
    fp = candidates.fingerprints[group]
    if group == fp.digest or fp.digest not in candidates.apart:
        return hoisted_key(fp)
    return hoisted_key(fp, apart=(candidates.keys[group][0], candidates.ordinal[group]))


def plan_hoists(candidates: Candidates, settings: Settings, excluded: Container[str] = ()) -> Plan:
    """Hoist every content that :func:`why_inline` does not keep inline.

    ``excluded``: groups to leave inline whatever their size (stage 1 leaves
    excluded objects unfingerprinted; a report fingerprints them to show them).
    """
    hoists = {}
    for group, fp in candidates.fingerprints.items():
        tasks = candidates.keys[group]
        reason = EXCLUDED if group in excluded else why_inline(fp.nbytes, len(tasks), settings)
        if reason is None:
            hoists[group] = Hoist(group_key(candidates, group), fp, tuple(tasks), candidates.values[group])
        elif fp.nbytes >= NOTABLE_BYTES:
            # a dry run says why a repeated content stays inline, as a report does
            level = logging.INFO if settings.dry_run and len(tasks) > 1 else logging.DEBUG
            logger.log(
                level,
                "%sleft %s (%s) inline: %s (carried by %d task%s; %s)",
                "dry run: " if settings.dry_run else "",
                fp.label,
                format_bytes(fp.nbytes),
                reason,
                len(tasks),
                "" if len(tasks) == 1 else "s",
                settings.hoisting_rule(),
            )
    apart = tuple(_kept_apart(candidates, hoists, settings))
    for kept in apart:
        logger.debug("%s", kept.message(settings.merge_equal))
    return Plan(hoists, apart)


def _kept_apart(candidates: Candidates, hoists: Mapping[str, Hoist], settings: Settings) -> Iterator[Apart]:
    """Contents held by several groups where one key for all would save payload."""
    for digest, groups in candidates.apart.items():
        fp = candidates.fingerprints[groups[0]]
        if fp.nbytes < NOTABLE_BYTES:
            continue
        payload = sum(fp.nbytes if g in hoists else fp.nbytes * len(candidates.keys[g]) for g in groups)
        carriers = len({key for g in groups for key in candidates.keys[g]})
        merged = fp.nbytes if why_inline(fp.nbytes, carriers, settings) is None else fp.nbytes * carriers
        if payload > merged:
            yield Apart(fp.label, fp.nbytes, len(groups), payload - merged)
