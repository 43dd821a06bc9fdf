"""Where a distributed scheduler turns a submitted graph into tasks, and how we step in there.

>>> interception_problem() is None  # this distributed has the point, with the expected shape
True

``Scheduler.update_graph`` (the ``update-graph`` stream handler) deserializes
the expression a client submitted and materializes it with the module-level
function ``distributed.scheduler._materialize_graph(expr, validate)``, run in a
thread through ``distributed.utils.offload``, which copies the caller's
contextvars.  Its result, ``(dict of GraphNode, annotations by type)``, then
goes to culling (low-level graphs), ``dask.order`` and the task states.
Distributed has no public hook before the task states exist
(``SchedulerPlugin.update_graph`` runs after them and gets keys), so this is
the narrowest point: one function, with the whole graph of one submission,
already off the event loop.

Two pieces, so that several schedulers in one process stay independent:

- per scheduler instance, :func:`wrap_update_graph` replaces its
  ``update-graph`` stream handler with a coroutine that sets a contextvar to
  this submission's handler, then awaits the original;
- once per process, :func:`hold_materialize` replaces the module-level
  function with :func:`_materialize_graph`, which calls the original
  directly unless that contextvar is set.  It is reference-counted and put
  back when the last scheduler lets go: any other scheduler in the process
  (without the route) materializes exactly as before.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from dedupgraph.core.pipeline import Graph

if TYPE_CHECKING:
    from distributed import Scheduler

#: annotation kind -> key -> value, as distributed materializes them with the graph
AnnotationsByType = dict[str, dict[Hashable, Any]]
#: distributed's ``_materialize_graph(expr, validate) -> (graph, annotations_by_type)``
Materialize = Callable[[Any, bool], tuple[Graph, AnnotationsByType]]
#: what the route does with one submission: ``handler(materialize, expr, validate)``
Handler = Callable[[Materialize, Any, bool], tuple[Graph, AnnotationsByType]]

_ACTIVE: contextvars.ContextVar[Handler | None] = contextvars.ContextVar("dedupgraph_submission", default=None)

# ``update_graph`` parameters the route reads or passes along by name
_UPDATE_GRAPH_PARAMETERS = ("client", "expr_ser", "keys", "internal_priority", "annotations")


def interception_problem() -> str | None:
    """None if this distributed materializes graphs where and how the route expects, else what differs."""
    try:
        import distributed.scheduler as ds
    except ImportError as e:  # pragma: no cover - distributed is a dependency
        return f"distributed cannot be imported ({e})"
    function = getattr(ds, "_materialize_graph", None)
    if not callable(function):
        return "distributed.scheduler._materialize_graph is missing"
    original = inspect.unwrap(function)
    try:
        parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return "distributed.scheduler._materialize_graph has no readable signature"
    if parameters != ["expr", "validate"]:
        return f"distributed.scheduler._materialize_graph takes ({', '.join(parameters)}), not (expr, validate)"
    update_graph = inspect.unwrap(getattr(ds.Scheduler, "update_graph", None) or (lambda: None))
    if not inspect.iscoroutinefunction(update_graph):
        return "distributed.scheduler.Scheduler.update_graph is not a coroutine function"
    if "_materialize_graph" not in update_graph.__code__.co_names:
        return "Scheduler.update_graph no longer calls _materialize_graph"
    names = inspect.signature(update_graph).parameters
    missing = [name for name in _UPDATE_GRAPH_PARAMETERS if name not in names]
    if missing:
        return f"Scheduler.update_graph lacks the parameters {', '.join(missing)}"
    from dedupgraph.compat import MISSING_INTERNALS

    if MISSING_INTERNALS:
        return f"dask lacks {', '.join(MISSING_INTERNALS)}"
    return None


def current_handler() -> Handler | None:
    """The route's handler of the submission this scheduler is taking in now, if any.

    Set while ``update_graph`` deserializes and materializes that graph (see
    :func:`wrap_update_graph`): what runs then, such as an object's
    unpickling, learns which scheduler's submission it belongs to.
    """
    return _ACTIVE.get()


def _materialize_graph(expr: Any, validate: bool) -> tuple[Graph, AnnotationsByType]:
    """``distributed.scheduler._materialize_graph``, through the route of the submitting scheduler, if any."""
    handler = _ACTIVE.get()
    original: Materialize = getattr(_materialize_graph, "__wrapped__")
    if handler is None:
        return original(expr, validate)
    return handler(original, expr, validate)


setattr(_materialize_graph, "__wrapped__", None)  # distributed's, once hold_materialize has run

_holders = 0
_holders_lock = threading.Lock()


def hold_materialize() -> None:
    """Route ``_materialize_graph`` through :func:`_materialize_graph`; one call per scheduler."""
    global _holders
    import distributed.scheduler as ds

    with _holders_lock:
        current = ds._materialize_graph
        if current is not _materialize_graph:
            setattr(_materialize_graph, "__wrapped__", current)
            ds._materialize_graph = _materialize_graph
        _holders += 1


def release_materialize() -> None:
    """Undo one :func:`hold_materialize`; the last one puts distributed's function back."""
    global _holders
    import distributed.scheduler as ds

    with _holders_lock:
        _holders = max(0, _holders - 1)
        # if something replaced ours meanwhile, ours stays underneath it: inert without a handler
        if _holders == 0 and ds._materialize_graph is _materialize_graph:
            ds._materialize_graph = getattr(_materialize_graph, "__wrapped__")


def materialize_held() -> bool:
    """Whether the module-level function is currently ours."""
    import distributed.scheduler as ds

    return ds._materialize_graph is _materialize_graph


def wrap_update_graph(
    scheduler: Scheduler,
    on_submission: Callable[[dict[str, Any]], Handler | None],
    on_done: Callable[[Handler], None] | None = None,
) -> Callable[[], None]:
    """Make ``scheduler``'s ``update-graph`` handler call ``on_submission(message)`` first.

    ``on_submission`` gets the message's fields (it may take out fields of
    its own, before distributed sees them) and returns the handler for this
    submission's materialization, or None.  ``on_done(handler)``, if given,
    runs once distributed's handler has returned, on the event loop, with the
    graph's task states in place.  Returns a function that undoes the wrapping.
    """
    original = scheduler.stream_handlers["update-graph"]

    async def update_graph(**message: Any) -> None:
        handler = on_submission(message)
        token = _ACTIVE.set(handler)
        try:
            await original(**message)
        finally:
            _ACTIVE.reset(token)
        if handler is not None and on_done is not None:
            on_done(handler)

    setattr(update_graph, "__wrapped__", original)
    scheduler.stream_handlers["update-graph"] = update_graph

    def undo() -> None:
        if scheduler.stream_handlers.get("update-graph") is update_graph:
            scheduler.stream_handlers["update-graph"] = original

    return undo
