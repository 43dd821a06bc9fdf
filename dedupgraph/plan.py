"""Stage 2: decide which contents to hoist, and under which key.

>>> from dedupgraph.fingerprint import Fingerprint
>>> hoisted_key(Fingerprint("0" * 32, 250_000, "Mapper"))
'dedup-Mapper-00000000000000000000000000000000'
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from dask.utils import format_bytes

from dedupgraph.candidates import Candidates
from dedupgraph.fingerprint import Fingerprint
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")


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
class Plan:
    """Hoists by content digest."""

    hoists: dict[str, Hoist]

    def __bool__(self) -> bool:
        return bool(self.hoists)


def hoisted_key(fp: Fingerprint) -> str:
    """The graph key of a hoisted content: the same bytes always give the same key."""
    return f"dedup-{fp.label}-{fp.digest}"


def plan_hoists(candidates: Candidates, settings: Settings) -> Plan:
    """Hoist every content of at least ``min_bytes`` carried by at least ``min_count`` tasks."""
    hoists = {}
    for digest, fp in candidates.fingerprints.items():
        tasks = candidates.keys[digest]
        if fp.nbytes < settings.min_bytes:
            continue
        if len(tasks) < settings.min_count:
            logger.debug(
                "left %s (%s) inline: carried by %d task(s), min-count is %d",
                fp.label,
                format_bytes(fp.nbytes),
                len(tasks),
                settings.min_count,
            )
            continue
        hoists[digest] = Hoist(hoisted_key(fp), fp, tuple(tasks), candidates.values[digest])
    return Plan(hoists)
