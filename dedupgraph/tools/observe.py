"""What a scheduler with the route holds and did: the facts behind the page, ``/metrics`` and ``dedupgraph status``.

>>> import asyncio
>>> from distributed import Scheduler
>>> async def main():
...     async with Scheduler(dashboard_address=":0", preload=["dedupgraph.scheduler"]) as s:
...         return snapshot(s)
>>> now = asyncio.run(main())
>>> now.route, now.held, now.totals.graphs_seen
(True, (), 0)

A hoisted object the cluster holds now is a task of the scheduler's whose
key is a hoisted key (``dedup-<Type>-<digest>``, see
``docs/how-it-works.rst``, "Keys") in memory on some workers: its type and
digest come from the key, the tasks that use it are its dependents, the
workers from ``who_has``.  Its size is the pickled size the route recorded
when it hoisted it (the payload each carrying task held before); for a key
the route did not hoist (``dedupgraph.deduplicate(..., client=...)``) or no
longer remembers, the workers' estimate (``nbytes``, which for an object
that merely holds a Series is a few dozen bytes).

Finding them costs no walk over every task: the scheduler counts its tasks
by key prefix, and the route remembers the keys it hoisted.  Only when
those do not account for every hoisted key in memory are the scheduler's
tasks looked through.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dedupgraph.routes.distributed.plugin import kept_for_reuse, observations, status
from dedupgraph.routes.distributed.records import GraphRecord, HoistedObject, Totals

if TYPE_CHECKING:
    from distributed import Scheduler

PREFIX = "dedup-"
# dedup-[host-]<Type>-<digest>[-<suffix of equal copies kept apart>]
_KEY = re.compile(r"dedup-(?:(?P<host>host)-)?(?P<label>.+?)-(?P<digest>[0-9a-f]{32})(?:-[0-9a-f]{8})?")


@dataclass(frozen=True)
class HeldObject:
    """A hoisted object in memory on the cluster now.

    >>> HeldObject("dedup-Mapper-" + "0" * 32, "Mapper", "0" * 32, 240_000, True, 4, ("tcp://w1",)).saved_bytes
    720000
    """

    key: str
    label: str  #: its type
    digest: str  #: the xxh3-128 digest of its pickle
    nbytes: int  #: its size (see ``recorded``)
    recorded: bool  #: whether ``nbytes`` is the pickled size the route recorded, else the workers' estimate
    tasks: int  #: the tasks that use it now (its dependents)
    workers: tuple[str, ...]  #: the workers that hold it
    per_host: bool = False  #: held once per host, in shared memory (``share="host"``)
    hosts: tuple[str, ...] = ()  #: the hosts of the workers that hold it

    @property
    def saved_bytes(self) -> int:
        """Task payload its sharing saves now: one copy instead of one per task."""
        return self.nbytes * max(self.tasks - 1, 0)


@dataclass(frozen=True)
class Snapshot:
    """What a scheduler's route holds and did, at one moment."""

    route: bool  #: whether the scheduler runs the route
    problem: str | None  #: why not, where it does not
    held: tuple[HeldObject, ...]  #: the hoisted objects in memory now, most bytes saved first
    totals: Totals  #: since the route was switched on
    graphs: tuple[GraphRecord, ...]  #: the last graphs, the latest last
    kept: tuple[str, ...] = ()  #: the keys kept for reuse by later computations, least recently used first
    kept_bytes: int = 0  #: their pickled sizes, summed: what ``reuse-limit`` bounds


def snapshot(scheduler: Scheduler) -> Snapshot:
    """What ``scheduler``'s route holds now and did; run on its event loop (it reads the task states)."""
    account = observations(scheduler)
    if account is None:
        found = status(scheduler)
        return Snapshot(False, found.get("problem"), held_objects(scheduler, {}), Totals(), ())
    kept = kept_for_reuse(scheduler)
    entries = kept.entries() if kept is not None else []
    return Snapshot(
        True,
        None,
        held_objects(scheduler, account.known()),
        account.totals(),
        tuple(account.history()),
        kept=tuple(str(entry.key) for entry in entries if entry.key in scheduler.tasks),
        kept_bytes=sum(entry.nbytes for entry in entries if entry.key in scheduler.tasks),
    )


def held_objects(scheduler: Scheduler, known: Mapping[Hashable, HoistedObject]) -> tuple[HeldObject, ...]:
    """The hoisted objects in memory on ``scheduler``'s workers, most bytes saved first (see the module's doc)."""
    expected = sum(
        prefix.states.get("memory", 0) for name, prefix in list(scheduler.task_prefixes.items()) if name.startswith(PREFIX)
    )
    if not expected:
        return ()
    found: dict[Hashable, HeldObject] = {}
    for key in known:
        ts = scheduler.tasks.get(key)
        if ts is not None and ts.state == "memory":
            found[key] = _held(key, ts, known)
    if len(found) < expected:  # hoisted elsewhere, or forgotten by the route's account
        for key, ts in list(scheduler.tasks.items()):
            if ts.state == "memory" and isinstance(key, str) and key.startswith(PREFIX) and key not in found:
                held = _held(key, ts, known)
                if held.digest:
                    found[key] = held
    return tuple(sorted(found.values(), key=lambda h: (-h.saved_bytes, h.key)))


def _held(key: Hashable, ts: Any, known: Mapping[Hashable, HoistedObject]) -> HeldObject:
    text = str(key)
    match = _KEY.fullmatch(text)
    recorded = known.get(key)
    label = recorded.label if recorded is not None else match.group("label") if match else ""
    return HeldObject(
        key=text,
        label=label,
        digest=match.group("digest") if match else "",
        nbytes=recorded.nbytes if recorded is not None else int(ts.nbytes or 0),
        recorded=recorded is not None,
        tasks=len(ts.dependents),
        workers=tuple(sorted(ws.address for ws in ts.who_has or ())),
        per_host=bool(match and match.group("host")),
        hosts=tuple(sorted({ws.host for ws in ts.who_has or ()})),
    )


def on_scheduler(dask_scheduler: Scheduler | None = None) -> dict[str, Any]:
    """Runs on the scheduler for ``dedupgraph status``: its :class:`Snapshot`, as plain data.

    >>> on_scheduler()["route"]  # not on a scheduler
    False
    """
    from dedupgraph.version import __version__

    if dask_scheduler is None:
        return {"version": __version__, "route": False, "problem": "not run on a scheduler"}
    found = dataclasses.asdict(snapshot(dask_scheduler))
    found["version"] = __version__
    return found
