"""Stage 2: decide which contents to hoist, and under which key.

>>> from dedupgraph.fingerprint import Fingerprint
>>> hoisted_key(Fingerprint("0" * 32, 250_000, "Mapper"))
'dedup-Mapper-00000000000000000000000000000000'
>>> why_inline(250_000, 1, Settings()), why_inline(1_000, 50, Settings()), why_inline(250_000, 50, Settings())
('single use', 'below min-bytes', None)
"""

from __future__ import annotations

import logging
from collections.abc import Container, Hashable
from dataclasses import dataclass, field
from typing import Any

from dask.utils import format_bytes

from dedupgraph.candidates import Candidates
from dedupgraph.fingerprint import EXCLUDED, Fingerprint
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")

# Why a content stays inline, besides stage 1's EXCLUDED and UNPICKLABLE.
BELOW_MIN_BYTES = "below min-bytes"
SINGLE_USE = "single use"
BELOW_MIN_COUNT = "below min-count"  # carried by more than one task, but fewer than min-count

# Contents pickled smaller than this are neither reported nor logged one by
# one: they are mostly functions pickled by reference and small arguments,
# which every graph has by the thousand.
NOTABLE_BYTES = 1024


def why_inline(nbytes: int, ntasks: int, settings: Settings) -> str | None:
    """Why a content of ``nbytes`` carried by ``ntasks`` tasks stays inline; None: it is hoisted."""
    if nbytes < settings.min_bytes:
        return BELOW_MIN_BYTES
    if ntasks < settings.min_count:
        return SINGLE_USE if ntasks == 1 else BELOW_MIN_COUNT
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
class Plan:
    """Hoists by content digest."""

    hoists: dict[str, Hoist]

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


def hoisted_key(fp: Fingerprint) -> str:
    """The graph key of a hoisted content: the same bytes always give the same key."""
    return f"dedup-{fp.label}-{fp.digest}"


def plan_hoists(candidates: Candidates, settings: Settings, excluded: Container[str] = ()) -> Plan:
    """Hoist every content of at least ``min_bytes`` carried by at least ``min_count`` tasks.

    ``excluded``: digests to leave inline whatever their size (stage 1 leaves
    excluded objects unfingerprinted; a report fingerprints them to show them).
    """
    hoists = {}
    for digest, fp in candidates.fingerprints.items():
        tasks = candidates.keys[digest]
        reason = EXCLUDED if digest in excluded else why_inline(fp.nbytes, len(tasks), settings)
        if reason is None:
            hoists[digest] = Hoist(hoisted_key(fp), fp, tuple(tasks), candidates.values[digest])
        elif fp.nbytes >= NOTABLE_BYTES:
            logger.debug(
                "left %s (%s) inline: %s (carried by %d task%s; min-bytes %s, min-count %d)",
                fp.label,
                format_bytes(fp.nbytes),
                reason,
                len(tasks),
                "" if len(tasks) == 1 else "s",
                format_bytes(settings.min_bytes),
                settings.min_count,
            )
    return Plan(hoists)
