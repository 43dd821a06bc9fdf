"""What the scheduler route did with each graph: one small immutable record per graph, and a scheduler's account of them.

>>> mapper = HoistedObject("dedup-Mapper-" + "8c1f" * 8, "Mapper", nbytes=241_000, tasks=500)
>>> record = GraphRecord(DEDUPLICATED, "", tasks=501, hoisted=(mapper,), cpu_seconds=0.02)
>>> record.bytes_removed
120259000
>>> observations = Observations()
>>> observations.add(record)
>>> observations.totals().graphs_seen, observations.totals().objects_hoisted
(1, {'Mapper': 1})
>>> [(r.number, r.outcome) for r in observations.history()]
[(1, 'deduplicated')]

The route (``dedupgraph.routes.distributed.submissions.Route``) makes one
:class:`GraphRecord` per submitted graph, once, at the end of its work on
it, and hands it to an observer; the scheduler plugin's observer is the
:meth:`Observations.add` of its scheduler.  Nothing here runs per task: a
record holds the number of tasks and one entry per hoisted object.

The outcome of a graph, and its cause:

- ``deduplicated``: at least one object hoisted (cause empty);
- ``unchanged``: ``nothing large`` (the layers showed nothing the pass
  could hoist), ``nothing to hoist`` (nothing large was both carried by
  ``min-count`` tasks and worth hoisting), ``dry run``, or ``materialization raised``
  (distributed's own materialization raised, as it would without dedupgraph);
- ``failed``: the route failed and the graph runs as plain dask's, with one
  WARNING in the scheduler's log: ``submission`` (the message could not be
  read), ``settings`` (the settings that apply could not be found, invalid
  ones for instance) or ``pass`` (the pass, or keeping plain dask's
  annotations and priorities, raised).

A fallback is a cheaper way that did not work out, after which the pass
ran on the materialized graph, as it does for graphs that never had the
cheaper way: ``prescan failed`` (reading the layers raised), ``layers
failed`` (hoisting in the layers raised) and ``layers declined`` (its
checks turned the graph down, as for ``rechunk(...).map_blocks(...)``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

# outcomes
DEDUPLICATED = "deduplicated"
UNCHANGED = "unchanged"
FAILED = "failed"

# causes of an unchanged graph
NOTHING_LARGE = "nothing large"
NOTHING_TO_HOIST = "nothing to hoist"
DRY_RUN = "dry run"
MATERIALIZATION_RAISED = "materialization raised"

# causes of a failure
SUBMISSION = "submission"
SETTINGS = "settings"
PASS = "pass"

# causes of a fallback to the pass
PRESCAN_FAILED = "prescan failed"
LAYERS_FAILED = "layers failed"
LAYERS_DECLINED = "layers declined"

#: graphs a scheduler remembers, the latest last: what the page and ``dedupgraph status`` show
HISTORY = 50
#: hoisted keys a scheduler remembers the type and size of (a hundred bytes or so each)
KNOWN_KEYS = 4096


@dataclass(frozen=True)
class HoistedObject:
    """One object hoisted from one graph: its key, its type, its pickled size and the tasks that carried it.

    >>> HoistedObject("dedup-list-" + "0" * 32, "list", nbytes=1000, tasks=3).saved_bytes
    2000
    """

    key: str
    label: str  #: the object's type, as in its key
    nbytes: int  #: its pickled size: what each carrying task held before
    tasks: int  #: the tasks that carried it in this graph

    @property
    def saved_bytes(self) -> int:
        """Task payload no longer repeated in this graph: every copy but the one the key holds."""
        return self.nbytes * max(self.tasks - 1, 0)


@dataclass(frozen=True)
class GraphRecord:
    """What the route did with one graph (see the module's doc for outcomes and causes)."""

    outcome: str
    cause: str = ""
    tasks: int = 0  #: the graph's tasks, as distributed materialized it (without the hoisted keys)
    hoisted: tuple[HoistedObject, ...] = ()
    #: CPU time of the scheduler's materializing thread while the route handled this graph,
    #: distributed's own materialization included (the route wraps it, and hoisting in the
    #: layers happens inside it)
    cpu_seconds: float = 0.0
    fallbacks: tuple[str, ...] = ()
    number: int = 0  #: 1 for the first graph its scheduler received, set by :class:`Observations`

    @property
    def bytes_removed(self) -> int:
        """Task payload removed from this graph."""
        return sum(h.saved_bytes for h in self.hoisted)


@dataclass(frozen=True)
class Totals:
    """Running totals over every graph one scheduler received since the route was switched on."""

    graphs_seen: int = 0
    graphs_deduplicated: int = 0
    objects_hoisted: dict[str, int] = field(default_factory=dict)  #: type -> objects hoisted
    bytes_removed: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)  #: cause -> graphs
    failures: dict[str, int] = field(default_factory=dict)  #: cause -> graphs
    cpu_seconds: float = 0.0


class Observations:
    """One scheduler's account of its graphs: the last :data:`HISTORY` records, running totals, known hoisted keys.

    Records arrive from distributed's materializing threads and are read on
    the event loop (the page, ``/metrics``, ``dedupgraph status``): every
    access takes one lock, for as long as a few dictionary updates.
    """

    def __init__(self, history: int = HISTORY, known_keys: int = KNOWN_KEYS) -> None:
        self._lock = threading.Lock()
        self._history: deque[GraphRecord] = deque(maxlen=history)
        self._known: OrderedDict[Hashable, HoistedObject] = OrderedDict()
        self._known_limit = known_keys
        self._seen = 0
        self._deduplicated = 0
        self._hoisted: dict[str, int] = {}
        self._bytes_removed = 0
        self._fallbacks: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._cpu_seconds = 0.0

    def add(self, record: GraphRecord) -> None:
        """Account for one graph's record (the route's observer)."""
        with self._lock:
            self._seen += 1
            record = dataclasses.replace(record, number=self._seen)
            self._history.append(record)
            if record.outcome == DEDUPLICATED:
                self._deduplicated += 1
            elif record.outcome == FAILED:
                self._failures[record.cause] = self._failures.get(record.cause, 0) + 1
            for cause in record.fallbacks:
                self._fallbacks[cause] = self._fallbacks.get(cause, 0) + 1
            for hoisted in record.hoisted:
                self._hoisted[hoisted.label] = self._hoisted.get(hoisted.label, 0) + 1
                self._known[hoisted.key] = hoisted
                self._known.move_to_end(hoisted.key)
            while len(self._known) > self._known_limit:
                self._known.popitem(last=False)
            self._bytes_removed += record.bytes_removed
            self._cpu_seconds += record.cpu_seconds

    def history(self) -> list[GraphRecord]:
        """The last graphs' records, the latest last."""
        with self._lock:
            return list(self._history)

    def totals(self) -> Totals:
        with self._lock:
            return Totals(
                graphs_seen=self._seen,
                graphs_deduplicated=self._deduplicated,
                objects_hoisted=dict(self._hoisted),
                bytes_removed=self._bytes_removed,
                fallbacks=dict(self._fallbacks),
                failures=dict(self._failures),
                cpu_seconds=self._cpu_seconds,
            )

    def known(self) -> dict[Hashable, HoistedObject]:
        """The hoisted keys remembered (the latest :data:`KNOWN_KEYS`), each as the last graph that hoisted it saw it."""
        with self._lock:
            return dict(self._known)
