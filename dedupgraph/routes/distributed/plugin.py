"""The scheduler plugin: deduplicate every graph this scheduler receives, whatever built it.

    dask scheduler --preload dedupgraph.scheduler
    # or distributed.scheduler.preload: [dedupgraph.scheduler] in the scheduler's config,
    # or DASK_DEDUPGRAPH__ENABLED=True in the scheduler's environment (the startup hook adds it),
    # or dedupgraph.enable() in a process, then LocalCluster() there

>>> import asyncio
>>> from distributed import Scheduler
>>> from dedupgraph.routes.activation import SCHEDULER_PRELOAD
>>> async def main():
...     async with Scheduler(dashboard_address=":0", preload=[SCHEDULER_PRELOAD]) as s:
...         return route_on(s)
>>> asyncio.run(main())
True

Every collection ends up as tasks in one place: ``Scheduler.update_graph``
materializes the submitted expression (dask-expr DataFrames and array-expr
arrays lowered, legacy arrays, delayed values and bags optimized, graphs of
``client.map`` and ``client.submit`` built).  The route steps in right
there, in the thread where distributed already materializes, before any task
state exists (see ``dedupgraph.routes.distributed.hook`` for the point and its check,
``dedupgraph.routes.distributed.submissions`` for what happens to each graph).  A client with
dedupgraph sends its settings with each graph (``dedupgraph.routes.distributed.client``);
otherwise this scheduler's ``dask.config`` applies.

If this distributed lacks the interception point, or it changed shape, the
route stays off with one WARNING, graphs run unchanged, and the scheduler
keeps the once-per-process hint instead.
"""

from __future__ import annotations

import inspect
import logging
import sys
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin

from dedupgraph.once import Once
from dedupgraph.routes.distributed.hook import (
    hold_materialize,
    interception_problem,
    release_materialize,
    wrap_update_graph,
)
from dedupgraph.routes.distributed.records import FAILED, SUBMISSION, GraphRecord, Observations
from dedupgraph.routes.distributed.replicas import keep_copies
from dedupgraph.routes.distributed.reuse import KEEP_MIN_BYTES, KEEPER, Content, KeptObjects, limit_in_bytes
from dedupgraph.routes.distributed.submissions import Route, Submission
from dedupgraph.routes.distributed.uploads import OFFER_OP, RESERVE_OP, SPARE_MIN_BYTES, outline
from dedupgraph.routes.distributed.wire import FIELD
from dedupgraph.settings import Settings, warn_invalid

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger("dedupgraph")

PLUGIN = "dedupgraph-route"
# Reservations whose graph never came (the client failed between reserving and
# sending) are dropped oldest first beyond this many; a graph takes its own at once.
MAX_RESERVATIONS = 256

_problem_told = Once()


def dask_setup(scheduler: Scheduler) -> None:
    """Run by distributed when this module is a scheduler preload."""
    install(scheduler)


def dask_teardown(scheduler: Scheduler) -> None:
    uninstall(scheduler)


class _RoutePlugin(SchedulerPlugin):
    """Holds one scheduler's route, its account of the graphs and what it keeps for reuse; takes the route out when the scheduler closes."""

    name = PLUGIN
    deduplicates_graphs = True  #: what the hint looks for (see ``dedupgraph.tools.hint``)

    def __init__(self, scheduler: Scheduler, route: Route, undo: Any, observations: Observations) -> None:
        self.scheduler = scheduler
        self.route = route
        self.observations = observations
        self.kept = KeptObjects()
        self._undo = undo
        # token -> (client, content key -> Content): objects held for one graph a client will send
        self._reservations: OrderedDict[str, tuple[str, dict[str, Content]]] = OrderedDict()
        self._offered: dict[str, list[list[str]]] = {}  # client -> what it was last told is kept

    def undo(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    async def close(self) -> None:
        self.undo()

    def keep(self, client: str, submission: Submission) -> None:
        """After ``client``'s graph has its task states: keep its hoisted keys for later graphs, within the limit."""
        if not submission.hoisted or not submission.reuse_limit:
            return
        limit = min(self._limit(submission.reuse_limit), self._limit(_own_reuse_limit()))
        tasks = self.scheduler.tasks
        self.kept.drop_missing(tasks.__contains__)
        objects = [(h.key, h.nbytes) for h in submission.hoisted if h.key in tasks and h.nbytes >= KEEP_MIN_BYTES]
        keep, release = self.kept.used(client, objects, limit, submission.contents)
        self._apply(keep, release)

    def offer(self, client: str) -> None:
        """Tell ``client`` (one whose graphs carry dedupgraph's settings) which kept objects it may leave out."""
        self.kept.drop_missing(self.scheduler.tasks.__contains__)
        offered = self.kept.offered(SPARE_MIN_BYTES, outline)
        comm = self.scheduler.client_comms.get(client)
        if comm is None or self._offered.get(client) == offered:
            return
        self._offered[client] = offered
        comm.send({"op": OFFER_OP, "objects": offered})

    def reserve(self, client: str, keys: list[str]) -> dict[str, Any]:
        """The ``dedupgraph_reserve`` handler: hold the kept objects of ``keys`` for ``client``'s next graph.

        Answers the token that graph names and the keys found; the objects are
        held until that graph is unpickled here, whatever the kept objects do
        meanwhile (see ``dedupgraph.routes.distributed.uploads``).
        """
        self.kept.drop_missing(self.scheduler.tasks.__contains__)
        found = self.kept.find(keys)
        if not found:
            return {"token": None, "found": []}
        token = uuid.uuid4().hex
        self._reservations[token] = (client, found)
        while len(self._reservations) > MAX_RESERVATIONS:
            self._reservations.popitem(last=False)
        return {"token": token, "found": list(found)}

    def take(self, token: str) -> dict[str, Content] | None:
        """The objects reserved under ``token``, now let go of here; None if unknown."""
        reserved = self._reservations.pop(token, None)
        return None if reserved is None else reserved[1]

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        self._apply([], self.kept.client_closed(client))
        self._offered.pop(client, None)
        for token in [t for t, (owner, _) in self._reservations.items() if owner == client]:
            del self._reservations[token]

    def restart(self, scheduler: Scheduler) -> None:
        self.kept.forget()  # the restart released every key, ours included

    def forget(self) -> tuple[int, int]:
        """Let go of everything kept: (objects, bytes) let go."""
        self.kept.drop_missing(self.scheduler.tasks.__contains__)
        count, nbytes = len(self.kept.entries()), self.kept.total_bytes
        self._apply([], self.kept.forget())
        return count, nbytes

    def _apply(self, keep: list[Any], release: list[Any]) -> None:
        if keep:
            self.scheduler.client_desires_keys(keys=keep, client=KEEPER)
        release = [key for key in release if key in self.scheduler.tasks]
        if release and KEEPER in self.scheduler.clients:  # it exists once it has wanted a key
            self.scheduler.client_releases_keys(keys=release, client=KEEPER, stimulus_id="dedupgraph-reuse-released")
            logger.debug("dedupgraph: let go of %d kept object(s)", len(release))

    def _limit(self, reuse_limit: float | int) -> int:
        from distributed.system import MEMORY_LIMIT  # this process's: the scheduler's memory

        workers = [ws.memory_limit for ws in self.scheduler.workers.values()]
        return limit_in_bytes(reuse_limit, workers, MEMORY_LIMIT)


def _own_reuse_limit() -> float | int:
    """This scheduler's own ``reuse-limit``: a client's settings may lower what is kept, never raise it."""
    try:
        return Settings.from_config().reuse_limit
    except ValueError as e:
        warn_invalid(e, "the scheduler keeps nothing for reuse")
        return 0


def install(scheduler: Scheduler) -> bool:
    """Switch the route on for ``scheduler`` (idempotent); False, with one WARNING, if it cannot be.

    Never raises: a preload that fails stops the scheduler from starting.
    """
    if route_on(scheduler):
        return True
    problem = interception_problem()
    if problem is None and not inspect.iscoroutinefunction(getattr(scheduler, "stream_handlers", {}).get("update-graph")):
        problem = "this scheduler has no update-graph coroutine handler"
    if problem is None:
        try:
            _install(scheduler)
            return True
        except Exception as e:  # noqa: BLE001  (reported; the scheduler must start)
            problem = f"installing it failed ({type(e).__name__}: {e})"
    _warn_once(problem)
    try:
        observe(scheduler)
    except Exception:  # the hint is a nicety: never in the way either
        logger.debug("dedupgraph: the hint could not be installed", exc_info=True)
    return False


def _install(scheduler: Scheduler) -> None:
    observations = Observations()  # what the page, /metrics and ``dedupgraph status`` show
    route = Route(observer=observations.add)

    def on_submission(message: dict[str, Any]) -> Any:
        client_settings = message.pop(FIELD, None)  # distributed must never see it
        try:
            annotations = message.get("annotations")
            priorities = message.get("internal_priority")
            ordering = None
            if not priorities:  # distributed orders the graph: the route may do it instead
                ordering = message["internal_priority"] = {}
            submission = Submission(
                client_settings=client_settings,
                annotations=annotations if isinstance(annotations, dict) else None,
                priorities=priorities if isinstance(priorities, dict) and priorities else None,
                live=scheduler.tasks.__contains__,
                ordering=ordering,
            )
        except Exception:
            logger.warning("dedupgraph scheduler route failed; graph left unchanged", exc_info=True)
            observations.add(GraphRecord(FAILED, SUBMISSION))
            # no route on this graph, but kept objects the client left out of it are put back
            return _Submitted(None, Submission(), message.get("client"), plugin.take)
        return _Submitted(route, submission, message.get("client"), plugin.take)

    def on_done(handler: Any) -> None:
        if isinstance(handler, _Submitted) and handler.client is not None:
            try:
                plugin.keep(handler.client, handler.submission)
                if handler.submission.client_settings is not None:  # a client with dedupgraph's client side
                    plugin.offer(handler.client)
            except Exception:  # keeping is a saving: never in the way of the computation
                logger.warning("dedupgraph: keeping hoisted objects for reuse failed", exc_info=True)
            finally:
                handler.submission.contents, handler.submission.restored = {}, []  # the objects: not held here

    async def reserve(client: str, keys: list[str]) -> dict[str, Any]:
        return plugin.reserve(client, keys)

    hold_materialize()
    unwrap = wrap_update_graph(scheduler, on_submission, on_done)
    scheduler.handlers[RESERVE_OP] = reserve
    restore_policies: Callable[[], None] | None = None  # set once the plugin exists

    def undo() -> None:
        unwrap()
        release_materialize()
        if scheduler.handlers.get(RESERVE_OP) is reserve:
            del scheduler.handlers[RESERVE_OP]
        if restore_policies is not None:
            restore_policies()

    # on_done reads ``plugin`` only once a graph has arrived, on this same event loop: after this line
    plugin = _RoutePlugin(scheduler, route, undo, observations)
    try:
        restore_policies = keep_copies(scheduler, plugin.kept.holds)  # kept objects keep their copies
        scheduler.add_plugin(plugin, idempotent=True)
    except Exception:
        undo()
        raise
    show_in_server_log()
    logger.info("dedupgraph: scheduler route on: every graph this scheduler receives is deduplicated")


class _Submitted:
    """The handler of one submission: the route on its graph; afterwards, what the plugin keeps of it."""

    def __init__(
        self, route: Route | None, submission: Submission, client: str | None, take: Callable[[str], dict[str, Content] | None]
    ) -> None:
        self.route, self.submission, self.client = route, submission, client
        self._take = take

    def __call__(self, materialize: Any, expr: Any, validate: bool) -> Any:
        if self.route is None:  # the route failed on this submission: distributed's graph as it is
            return materialize(expr, validate)
        return self.route.handle(materialize, expr, validate, self.submission)

    def reserved(self, token: str) -> dict[str, Any] | None:
        """While the graph is unpickled: the objects reserved for it under ``token`` (content key -> object)."""
        found = self._take(token)
        if found is None:
            return None
        self.submission.restored.extend(found.values())
        return {key: content.value for key, content in found.items()}


def uninstall(scheduler: Scheduler) -> None:
    """Switch the route off for ``scheduler``: graphs are materialized as distributed does."""
    plugin = scheduler.plugins.get(PLUGIN)
    if isinstance(plugin, _RoutePlugin):
        plugin.undo()
        scheduler.remove_plugin(PLUGIN)


def route_on(scheduler: Scheduler) -> bool:
    """Whether ``scheduler`` deduplicates the graphs it receives."""
    return isinstance(scheduler.plugins.get(PLUGIN), _RoutePlugin)


def observations(scheduler: Scheduler) -> Observations | None:
    """``scheduler``'s account of the graphs its route handled; None where the route is off."""
    plugin = scheduler.plugins.get(PLUGIN)
    return plugin.observations if isinstance(plugin, _RoutePlugin) else None


def kept_for_reuse(scheduler: Scheduler) -> KeptObjects | None:
    """What ``scheduler`` keeps for reuse; None where the route is off."""
    plugin = scheduler.plugins.get(PLUGIN)
    return plugin.kept if isinstance(plugin, _RoutePlugin) else None


def forget_kept(dask_scheduler: Scheduler) -> dict[str, int]:
    """Let go of every object ``dask_scheduler`` keeps for reuse (``client.run_on_scheduler`` calls it so)."""
    plugin = dask_scheduler.plugins.get(PLUGIN)
    count, nbytes = plugin.forget() if isinstance(plugin, _RoutePlugin) else (0, 0)
    return {"objects": count, "bytes": nbytes}


def observe(scheduler: Scheduler) -> None:
    """The once-per-process hint for this scheduler's graphs, from any client (route off)."""
    from dedupgraph.tools import hint

    show_in_server_log()
    hint.dask_setup(scheduler)


def show_in_server_log() -> None:
    """In a ``dask scheduler`` process, log dedupgraph's INFO lines where distributed logs its own.

    There distributed gives its own loggers a handler and the INFO level, and
    the hint and the route's lines are meant for that log.  Only if nobody
    configured the ``dedupgraph`` logger (``DASK_LOGGING__DEDUPGRAPH``,
    handlers): in any other process (a notebook with a ``LocalCluster``)
    dedupgraph logs nothing unless asked to, as everywhere.
    """
    if "distributed.cli.dask_scheduler" not in sys.modules:
        return
    ours, theirs = logging.getLogger("dedupgraph"), logging.getLogger("distributed")
    if ours.handlers or ours.level != logging.NOTSET or not theirs.handlers:
        return
    ours.setLevel(logging.INFO)
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.propagate = False  # as distributed's own loggers: no second copy through the root


def status(scheduler: Scheduler) -> dict[str, Any]:
    """What ``dedupgraph info --scheduler`` and a client's preload learn about ``scheduler``."""
    from dedupgraph.version import __version__

    on = route_on(scheduler)
    try:
        settings: Any = Settings.from_config().as_config()
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    except ValueError as e:
        settings = f"invalid: {e}"
    return {
        "version": __version__,
        "route": on,
        "problem": None if on else interception_problem() or "the route is not switched on for this scheduler",
        "settings": settings,
        "kept": _kept_summary(scheduler),
    }


def _kept_summary(scheduler: Scheduler) -> dict[str, Any] | None:
    kept = kept_for_reuse(scheduler)
    if kept is None:
        return None
    kept.drop_missing(scheduler.tasks.__contains__)
    return {
        "objects": [{"key": str(e.key), "bytes": e.nbytes, "clients": len(e.clients)} for e in kept.entries()],
        "bytes": kept.total_bytes,
    }


def _warn_once(problem: str) -> None:
    if not _problem_told():
        return
    logger.warning(
        "dedupgraph: the scheduler route stays off, graphs run unchanged: %s. "
        "Install a distributed release that dedupgraph supports (see pyproject.toml).",
        problem,
    )
