"""While the pass is off: one INFO hint when a graph carries much duplicated payload.

>>> # import dedupgraph (not enabled), then compute 4000 map_blocks tasks that each carry a 241 KB object:
>>> # INFO dedupgraph: this graph carries about 917 MiB of duplicated task payload (Mapper, in 4000
>>> # of 8000 tasks) and dedupgraph is off: dedupgraph.enable() hoists each such object into one ...

Two observers give it:

- a ``dask.callbacks.Callback`` (dask's hook for diagnostics such as the
  progress bar) that sees each graph a local scheduler (threads, sync,
  processes) is about to run.  Importing dedupgraph registers it; the
  import changes no configuration beyond registering dedupgraph's defaults;
- a ``SchedulerPlugin`` on a distributed scheduler.  A scheduler started
  with the ``dedupgraph.scheduler`` preload gets it while the route is
  off; so do the schedulers a process starts (``LocalCluster``) after
  :func:`install` added this module to ``distributed.scheduler.preload``.

A remote scheduler that can import dedupgraph but does not run the
scheduler route gets the same plugin from the first client whose
``dedupgraph.preload`` asks it about the route (the environment route's
clients do): it then hints once, in its own log, for graphs from any client.
A scheduler that runs the route is never sampled.

dask swaps its set of global callbacks out while a computation runs and puts
it back afterwards, so computations running at once in several threads of a
process can lose the callback (as they lose a registered ``ProgressBar``);
the local-scheduler hint is then gone for that process.

The hint shows at most once per process, only while none of the config keys
holds a dedupgraph pass, and above ``dedupgraph.hint-bytes`` (10 MiB; False
switches it off).  Each check looks at up to ``SAMPLE_TASKS`` tasks spread over
the graph and counts objects that tasks share by identity (what graphs built
from one Python object hold); an object is pickled only if it recurs.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import dask.config
from dask.callbacks import Callback
from dask.utils import format_bytes

from dedupgraph.once import Once
from dedupgraph.settings import Settings, first_report

if TYPE_CHECKING:
    from dask._task_spec import GraphNode
    from distributed import Scheduler

logger = logging.getLogger("dedupgraph")

T = TypeVar("T")

SAMPLE_TASKS = 2000
PRELOAD = "dedupgraph.tools.hint"

# Once per process: the only state here.
_given = Once()


def spread_sample(items: Sequence[T]) -> Sequence[T]:
    """At most about ``SAMPLE_TASKS`` items, evenly spread over ``items``.

    >>> len(spread_sample(range(1_000_000)))
    2000
    """
    return items[:: max(1, len(items) // SAMPLE_TASKS)]


def duplicated_payload(sample: Sequence[GraphNode], total: int) -> tuple[int, str, int]:
    """(estimated duplicated bytes, label of the largest contributor, tasks estimated to carry it).

    >>> from dask._task_spec import Task
    >>> big = bytes(100_000)
    >>> duplicated_payload([Task(i, len, big) for i in range(10)], total=100)
    (9903960, 'bytes', 100)

    ``sample``: tasks spread evenly over a graph of ``total`` tasks; what
    recurs in it is assumed to recur in the same proportion in the rest.
    """
    from dedupgraph.core.fingerprint import FingerprintMemo, is_obviously_small
    from dedupgraph.core.plan import NOTABLE_BYTES
    from dedupgraph.core.transform import walk_leaves

    counts: dict[int, int] = {}
    objects: dict[int, Any] = {}
    small: set[int] = set()
    in_task: set[int] = set()

    def count(value: Any, where: str) -> None:
        if is_obviously_small(value, NOTABLE_BYTES):
            small.add(id(value))
        elif id(value) not in in_task:
            in_task.add(id(value))
            objects[id(value)] = value
            counts[id(value)] = counts.get(id(value), 0) + 1

    for node in sample:
        walk_leaves(node, count, small)
        in_task.clear()
    memo = FingerprintMemo(NOTABLE_BYTES)
    scale = total / max(1, len(sample))
    estimate, top = 0, (0, "", 0)
    for ident, n in counts.items():
        if n < 2:
            continue
        fp = memo.fingerprint(objects[ident])
        if fp is None:
            continue
        carriers = min(total, round(n * scale))
        duplicated = fp.nbytes * (carriers - 1)
        estimate += duplicated
        top = max(top, (duplicated, fp.label, carriers))
    return estimate, top[1], top[2]


def wanted() -> bool:
    """Whether a graph is worth sampling: no hint given yet, and the pass is off."""
    return not _given and not pass_enabled()


# What the hint proposes: in a process that builds collections, and on a scheduler.
LOCAL_ADVICE = (
    "dedupgraph.enable() hoists each such object into one shared key (for DataFrames: "
    "dedupgraph.enable() before starting a LocalCluster, or dedupgraph.deduplicate(...))"
)
SCHEDULER_ADVICE = (
    "the scheduler route hoists each such object into one shared key, for every collection: set "
    "DASK_DEDUPGRAPH__ENABLED=True in this scheduler's environment (or start it with --preload "
    "dedupgraph.scheduler; for a LocalCluster: dedupgraph.enable() before starting it)"
)


def check(sample: Sequence[GraphNode], total: int, advice: str = LOCAL_ADVICE) -> None:
    """Log the hint if a graph carries enough duplicated payload; never raises.

    ``sample``: tasks of the graph, from :func:`spread_sample`; ``total``: its
    size.  Callers ask :func:`wanted` first, before they build the sample.
    """
    try:
        threshold = Settings.from_config().hint_bytes
    except ValueError as e:
        # one report per invalid setting and process: a route that met it first has warned
        _give(logging.WARNING if first_report(e) else logging.DEBUG, "no hints: the settings are invalid: %s", e)
        return
    if threshold is None:
        return
    try:
        duplicated, label, carriers = duplicated_payload(sample, total)
    except Exception:  # a hint must never fail a computation
        logger.debug("dedupgraph: the hint check failed", exc_info=True)
        return
    if duplicated >= threshold:
        _give(
            logging.INFO,
            "this graph carries about %s of duplicated task payload (%s, in %d of %d tasks) "
            "and dedupgraph is off: %s. Shown once; dedupgraph.hint-bytes: False silences it.",
            format_bytes(duplicated),
            label,
            carriers,
            total,
            advice,
        )


def _give(level: int, message: str, *args: Any) -> None:
    if _given():
        logger.log(level, message, *args)


def pass_enabled() -> bool:
    """Whether any of the array, delayed and bag optimizers is a dedupgraph pass."""
    from dedupgraph.routes.activation import OPTIMIZER_KEYS
    from dedupgraph.routes.config import Deduplicator

    return any(isinstance(dask.config.get(key, None), Deduplicator) for key in OPTIMIZER_KEYS)


class LocalSchedulerHint(Callback):
    """Checks each graph a local scheduler is about to run (it starts with the graph)."""

    def _start(self, dsk: Mapping[Hashable, GraphNode]) -> None:
        # while the pass is on, every local computation would pay for the sample
        if wanted():
            check(spread_sample(list(dsk.values())), len(dsk))


def _scheduler_plugin() -> Any:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class SchedulerHint(SchedulerPlugin):
        """Checks the tasks of each graph that enters a scheduler of this process."""

        name = "dedupgraph-hint"

        def update_graph(self, scheduler: Scheduler, *, tasks: Sequence[Hashable] = (), **kwargs: Any) -> None:
            # graphs come from any client here: this process's config route says nothing of them
            if _given or _route_on(scheduler):
                return
            states = (scheduler.tasks.get(key) for key in spread_sample(list(tasks)))
            sample = [ts.run_spec for ts in states if ts is not None and ts.run_spec is not None]
            check(sample, len(tasks), SCHEDULER_ADVICE)

    return SchedulerHint()


def _route_on(scheduler: Scheduler) -> bool:
    # by what the route's plugin says of itself: the route's module may not be imported here
    return any(getattr(plugin, "deduplicates_graphs", False) for plugin in scheduler.plugins.values())


def dask_setup(scheduler: Scheduler) -> None:
    """Scheduler preload: observe the graphs this scheduler receives."""
    scheduler.add_plugin(_scheduler_plugin(), idempotent=True)


def watch_local_schedulers() -> None:
    """Register the local schedulers' observer (idempotent); done when dedupgraph is imported."""
    if not any(isinstance(cb, LocalSchedulerHint) for cb in _registered()):
        LocalSchedulerHint().register()


def install() -> None:
    """Switch the hint on for the distributed schedulers this process starts, too (idempotent).

    >>> from dedupgraph.tools import hint
    >>> hint.install()  # doctest: +SKIP

    It adds this module to ``distributed.scheduler.preload``, which importing
    dedupgraph never does: a ``LocalCluster`` started afterwards logs the
    hint for the graphs it receives.
    """
    watch_local_schedulers()
    from dedupgraph.routes.activation import SCHEDULER_PRELOADS_KEY

    preloads = dask.config.get(SCHEDULER_PRELOADS_KEY, None) or []
    if isinstance(preloads, str):
        preloads = [preloads]
    if PRELOAD not in preloads:
        dask.config.set({SCHEDULER_PRELOADS_KEY: [*preloads, PRELOAD]})


def _registered() -> list[Any]:
    # Callback.active holds the callbacks' tuples; the instances are their bound methods' owners
    return [getattr(tup[0], "__self__", None) for tup in Callback.active if tup and tup[0] is not None]
