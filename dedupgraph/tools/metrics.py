"""dedupgraph's Prometheus metrics, on the ``/metrics`` of schedulers that run the route and of their workers.

>>> import asyncio
>>> from distributed import Scheduler
>>> from prometheus_client import generate_latest
>>> async def main():
...     async with Scheduler(dashboard_address=":0", preload=["dedupgraph.scheduler"]):
...         return generate_latest().decode()
>>> "dedupgraph_graphs_seen_total 0.0" in asyncio.run(main())
True

Distributed serves ``/metrics`` from ``prometheus_client``'s default
registry, to which its own collectors are added; ours are added there too,
once per process, and are read at each scrape:

- on the scheduler (:class:`SchedulerCollector`), when the scheduler preload
  ``dedupgraph.scheduler`` runs: the route's running totals (kept by the
  scheduler plugin, one record per graph) and the hoisted objects held now
  (``dedupgraph.tools.observe``);
- on each worker (:class:`WorkerCollector`), what ``share="host"`` maps
  and created in that process (``dedupgraph.placement.shared_memory``).
  The scheduler plugin :class:`SendsWorkerMetrics` adds the worker plugin
  :class:`WorkerMetrics` to every worker that joins, one at a time: not
  with ``Scheduler.register_worker_plugin``, whose plugins a worker must
  unpickle to finish starting, so that a worker without dedupgraph would
  not start at all; sent to one worker, a plugin it cannot unpickle costs
  an error line in its log and nothing else.

The names, with their meaning and labels, are listed in ``docs/operators.rst``.
In a process with several schedulers (tests, a ``LocalCluster`` per cell)
the scheduler's metrics add up those that run now; with scheduler and
workers in one process, each ``/metrics`` shows both kinds.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from dedupgraph.once import Once
from dedupgraph.placement import host_segment_bytes, shared_memory
from dedupgraph.routes.distributed.records import (
    LAYERS_DECLINED,
    LAYERS_FAILED,
    PASS,
    PRESCAN_FAILED,
    SETTINGS,
    SUBMISSION,
    Totals,
)
from dedupgraph.tools.observe import HeldObject, snapshot

if TYPE_CHECKING:
    from distributed import Scheduler, Worker
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)

logger = logging.getLogger("dedupgraph")

FALLBACK_CAUSES = (PRESCAN_FAILED, LAYERS_FAILED, LAYERS_DECLINED)
FAILURE_CAUSES = (SUBMISSION, SETTINGS, PASS)


class Collector:
    """A collector for prometheus_client's registry that never fails a scrape: subclasses yield their families."""

    def describe(self) -> list[Metric]:
        return []  # nothing to check for names taken: registering must not collect

    def collect(self) -> list[Metric]:
        # a failing collector would fail the whole /metrics, distributed's too
        try:
            return list(self.families())
        except Exception:
            if _collect_failure_told():
                logger.warning("dedupgraph: collecting its metrics failed; they are left out (said once)", exc_info=True)
            return []

    def families(self) -> Iterator[Metric]:
        raise NotImplementedError


_collect_failure_told = Once()


class SchedulerCollector(Collector):
    """The route's metrics for the schedulers of this process that run it (normally one)."""

    def __init__(self) -> None:
        self.schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()

    def families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals: list[Totals] = []
        held: list[HeldObject] = []
        kept_objects = kept_bytes = 0
        for scheduler in list(self.schedulers):
            if scheduler.status != Status.running:
                continue
            now = snapshot(scheduler)
            if now.route:
                totals.append(now.totals)
                held.extend(now.held)
                kept_objects += len(now.kept)
                kept_bytes += now.kept_bytes
        yield CounterMetricFamily(
            "dedupgraph_graphs_seen", "Graphs the scheduler route received", value=sum(t.graphs_seen for t in totals)
        )
        yield CounterMetricFamily(
            "dedupgraph_graphs_deduplicated",
            "Graphs in which the scheduler route hoisted at least one object",
            value=sum(t.graphs_deduplicated for t in totals),
        )
        yield _labelled(
            CounterMetricFamily(
                "dedupgraph_objects_hoisted", "Objects hoisted into a shared key, counted once per graph", labels=["type"]
            ),
            sorted(_added(t.objects_hoisted for t in totals).items()),
        )
        yield CounterMetricFamily(
            "dedupgraph_bytes_removed",
            "Task payload removed from graphs, in bytes: pickled size x (carrying tasks - 1) per hoisted object",
            value=sum(t.bytes_removed for t in totals),
        )
        yield _labelled(
            CounterMetricFamily(
                "dedupgraph_fallbacks", "Graphs where a cheaper way did not work out and the pass ran instead", labels=["cause"]
            ),
            _by_cause(_added(t.fallbacks for t in totals), FALLBACK_CAUSES),
        )
        yield _labelled(
            CounterMetricFamily("dedupgraph_failures", "Graphs the route failed on, left as plain dask's (logged)", labels=["cause"]),
            _by_cause(_added(t.failures for t in totals), FAILURE_CAUSES),
        )
        yield CounterMetricFamily(
            "dedupgraph_route_cpu_seconds",
            "CPU time of the materializing thread while the route handled graphs, distributed's materialization included",
            value=sum(t.cpu_seconds for t in totals),
        )
        by_type = sorted(_added({h.label: 1} for h in held).items())
        bytes_by_type = sorted(_added({h.label: h.nbytes} for h in held).items())
        yield _labelled(
            GaugeMetricFamily("dedupgraph_held_objects", "Hoisted objects in memory on the cluster now", labels=["type"]), by_type
        )
        yield _labelled(
            GaugeMetricFamily(
                "dedupgraph_held_bytes", "Size of the hoisted objects in memory now, one copy each, in bytes", labels=["type"]
            ),
            bytes_by_type,
        )
        yield GaugeMetricFamily(
            "dedupgraph_kept_objects", "Hoisted objects the scheduler keeps for later computations (reuse-limit)", value=kept_objects
        )
        yield GaugeMetricFamily(
            "dedupgraph_kept_bytes", "Pickled size of the objects kept for later computations, summed, in bytes", value=kept_bytes
        )


class WorkerCollector(Collector):
    """What ``share="host"`` maps and created in this process."""

    def families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = shared_memory()
        yield GaugeMetricFamily(
            "dedupgraph_shm_segments_mapped", "Shared-memory segments this process maps now (share='host')", value=now.segments
        )
        yield GaugeMetricFamily(
            "dedupgraph_shm_mapped_bytes", "Bytes of the shared-memory segments this process maps now", value=now.nbytes
        )
        yield GaugeMetricFamily(
            "dedupgraph_shm_host_bytes",
            "Bytes of dedupgraph's shared-memory segments on this host, counted once: every worker of a host shows the same "
            "figure, and no worker's process memory includes them",
            value=host_segment_bytes(),
        )
        yield CounterMetricFamily(
            "dedupgraph_shm_segments_created", "Shared-memory segments this process created", value=now.created
        )
        yield CounterMetricFamily(
            "dedupgraph_shm_created_bytes", "Bytes of the shared-memory segments this process created", value=now.created_bytes
        )


def _added(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for name, count in d.items():
            out[name] = out.get(name, 0) + count
    return out


def _labelled(family: Family, samples: Iterable[tuple[str, int]]) -> Family:
    """``family``, made with one label, with one sample per value of that label."""
    for value, count in samples:
        family.add_metric([value], count)
    return family


def _by_cause(counts: dict[str, int], causes: tuple[str, ...]) -> list[tuple[str, int]]:
    # every known cause from the start, at zero: a series that appears late defeats rate()
    return [(cause, counts.get(cause, 0)) for cause in causes] + sorted((c, n) for c, n in counts.items() if c not in causes)


# --- once per process: the collectors in prometheus_client's default registry (what /metrics serves)

_SCHEDULER_COLLECTOR = SchedulerCollector()
_WORKER_COLLECTOR = WorkerCollector()
_scheduler_collector_registered = Once()
_worker_collector_registered = Once()


def watch_scheduler(scheduler: Scheduler) -> None:
    """Show ``scheduler``'s route on this process's ``/metrics``, and have its workers show theirs."""
    from prometheus_client import REGISTRY

    if _scheduler_collector_registered():
        REGISTRY.register(_SCHEDULER_COLLECTOR)
    _SCHEDULER_COLLECTOR.schedulers.add(scheduler)
    scheduler.add_plugin(SendsWorkerMetrics(), idempotent=True)


def watch_worker() -> None:
    """Show this process's shared memory on its ``/metrics`` (idempotent)."""
    from prometheus_client import REGISTRY

    if _worker_collector_registered():
        REGISTRY.register(_WORKER_COLLECTOR)


class WorkerMetrics(WorkerPlugin):
    """On a worker: :func:`watch_worker`."""

    name = "dedupgraph-metrics"

    def setup(self, worker: Worker) -> None:
        try:
            watch_worker()
        except Exception:  # metrics must never be in a worker's way
            logger.warning("dedupgraph: the worker's metrics could not be registered", exc_info=True)


class SendsWorkerMetrics(SchedulerPlugin):
    """Adds :class:`WorkerMetrics` to each worker of its scheduler (see the module's doc for why one at a time)."""

    name = "dedupgraph-worker-metrics"

    def __init__(self) -> None:
        self._sending: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references

    async def start(self, scheduler: Scheduler) -> None:
        await _send(scheduler, list(scheduler.workers))

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        task = asyncio.ensure_future(_send(scheduler, [worker]))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def _send(scheduler: Scheduler, workers: list[str]) -> None:
    if not workers:
        return
    from distributed.protocol.pickle import dumps

    message = {"op": "plugin-add", "plugin": dumps(WorkerMetrics()), "name": WorkerMetrics.name}
    try:
        answers = await scheduler.broadcast(msg=message, workers=workers, on_error="return")
    except Exception:  # noqa: BLE001  (metrics only: never in the scheduler's way)
        logger.debug("dedupgraph: could not add the metrics plugin to %s", workers, exc_info=True)
        return
    for address, answer in answers.items():
        if not (isinstance(answer, dict) and answer.get("status") == "OK"):
            logger.debug("dedupgraph: worker %s did not take the metrics plugin: %r", address, answer)
