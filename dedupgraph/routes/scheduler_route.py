"""What the scheduler route does with one submitted graph, in the scheduler's materialization thread.

>>> from dask._task_spec import Task
>>> big = bytes(range(256)) * 1000
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> route = Route()
>>> out, annotations = route.materialize(lambda expr, validate: (dict(expr), {}), graph, False, Submission())
>>> sorted(key.rsplit("-", 1)[0] for key in out)
['a', 'b', 'dedup-bytes']

Per graph: (1) find the config route's passes in the expression (a client
with ``dedupgraph.enable()`` ships a ``Deduplicator`` as the low-level
optimizer of its arrays, delayed values and bags) and put their base
optimizers in their place, so that the graph is deduplicated once, here,
with one walk; (2) materialize as distributed does, a graph of arrays with
the broadcast arguments of its layers hoisted first where that does all the
pass would (``dedupgraph.routes.scheduler_layers``); (3) otherwise
deduplicate the result with ``deduplicate_graph`` and the settings that win,
unless the graph's layers already showed that nothing in it is large
(``dedupgraph.core.prescan``); (4) keep the task keys, annotations and
priorities exactly as plain dask gives them (``dask.order`` runs on plain
dask's graph, or on the hoisted one shaped as plain dask's), the hoisted
keys being data without any.

Settings, first that applies: those of the config route's passes found in
the expression (the client's, when it submitted); those the client sent
with the graph (``dedupgraph.routes.wire``); this scheduler's own ``dask.config``.

Any exception leaves the graph as distributed materializes it, with one
WARNING (invalid settings: one per setting and process).  A client whose
settings are invalid sends ``wire.PLAIN``: its graph stays as plain dask makes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.pipeline import announce, collection_paused, deduplicate_graph
from dedupgraph.core.prescan import expressions
from dedupgraph.routes.placing import placement_for
from dedupgraph.routes.config import Deduplicator, known_optimizer
from dedupgraph.routes.scheduler_layers import LayerHoisting, as_plain_shapes, installed
from dedupgraph.settings import Settings, first_report
from dedupgraph.routes.wire import from_wire, wants_plain

logger = logging.getLogger("dedupgraph")

Graph = dict[Hashable, Any]
AnnotationsByType = dict[str, dict[Hashable, Any]]
Materialize = Callable[[Any, bool], tuple[Graph, AnnotationsByType]]

# Keys of single-task graphs remembered per scheduler (a few hundred bytes each).
RECENT_KEYS = 4096


@dataclass
class Submission:
    """One ``update-graph`` message, as far as the route reads it.

    ``annotations`` and ``priorities`` are the message's own dicts, which
    ``Scheduler.update_graph`` only reads after the materialization: the
    route adjusts them there for the keys it adds.
    """

    client_settings: Mapping[str, Any] | None = None  #: the client's settings on the wire, if sent
    annotations: dict[str, Any] | None = None  #: global annotations, applied by distributed to every new task
    priorities: dict[Hashable, int] | None = None  #: the client's ``internal_priority`` (client.map, submit)
    live: Callable[[Hashable], bool] = lambda key: False  #: whether the scheduler already holds a key
    #: an empty dict passed as ``internal_priority`` where the client sent none: distributed
    #: runs ``dask.order`` itself unless the route fills it (see :func:`order_as_plain`)
    ordering: dict[Hashable, int] | None = None
    #: CPU seconds the route's own work took in the materializing thread (materializing
    #: and ordering, which distributed does anyway, not counted); for benchmarks and logs
    spent: float = 0.0


class Route:
    """The route of one scheduler: stateless per graph, except the keys recent single-task graphs carried."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_lock = threading.Lock()

    def materialize(
        self, original: Materialize, expr: Any, validate: bool, submission: Submission
    ) -> tuple[Graph, AnnotationsByType]:
        """``original(expr, validate)``, deduplicated; what ``_materialize_graph`` returns."""
        with _spending(submission):
            settings: Settings | None = None
            memo = None
            try:
                slots = config_route_slots(expr)
            except Exception:
                logger.warning("dedupgraph scheduler route failed; graph left unchanged", exc_info=True)
                slots = []
            else:
                try:
                    settings = winning_settings([slot[2] for slot in slots], submission.client_settings)
                    if settings is not None:
                        memo = FingerprintMemo.for_pass(settings)  # the prescan's and the pass's: one pickle per object
                except Exception as e:
                    _report_failure(e)
                    settings = None
            for node, index, pass_ in slots:
                # one pass per graph: the config route's runs here, on the whole graph, below
                node.operands[index] = pass_.base
            skip = settings is None or _nothing_large(expr, settings, memo)
            layers = None if skip else _layer_hoisting(expr, settings, memo)  # type: ignore[arg-type]
        dsk, annotations_by_type = original(expr, validate)
        if skip:  # a failure above, or the layers showed nothing large: no walk
            return dsk, annotations_by_type
        if layers is not None:
            submission.spent += layers.spent
        try:
            if layers is not None and layers.plans:
                # dask's optimizer ran on hoisted layers: no walk, no pass (and, were there a call
                # that declined, its tasks stay as dask made them: the pass must not meet a key
                # hoisted already)
                out = dsk
                with _spending(submission):
                    hoisted = [h.key for plan in layers.plans for h in plan.hoists.values() if h.key in dsk]
                    for plan in layers.plans:
                        announce(plan, settings)  # type: ignore[arg-type]
                plain = (lambda: as_plain_shapes(dsk, set(hoisted))) if layers.applied else None
            else:
                with _spending(submission):
                    out = self.deduplicated(dsk, settings, submission, memo)  # type: ignore[arg-type]
                if out is dsk:
                    return dsk, annotations_by_type
                hoisted = [key for key in out if key not in dsk]
                plain = None if _culled_later(expr) else (lambda: dsk)
            self._as_plain(out, hoisted, plain, annotations_by_type, submission)
            return out, annotations_by_type
        except Exception:
            logger.warning("dedupgraph scheduler route failed; graph left as distributed materialized it", exc_info=True)
            if submission.ordering:
                submission.ordering.clear()  # distributed orders the graph itself
            return dsk, annotations_by_type

    @staticmethod
    def _as_plain(
        out: Graph,
        hoisted: list[Hashable],
        plain: Callable[[], Graph] | None,
        annotations_by_type: AnnotationsByType,
        submission: Submission,
    ) -> None:
        """Keep ``out``'s tasks as plain dask has them: annotations, and the priorities of ordering ``plain()``.

        ``plain``: plain dask's graph as ``dask.order`` sees it, or None where
        distributed must order (it culls a low-level graph first).
        """
        with _spending(submission):
            keep_plain(hoisted, out, annotations_by_type, submission)
        if plain is not None and submission.ordering is not None:
            # instead of distributed's own, with the collector paused as in the pass: the graph
            # was just built, and walking its young objects again and again costs more than the
            # pass (measured, 60,000 array tasks, best of 3: dask.order took 2.1 s of CPU paused,
            # 2.9 s on, 3.1 s on right after the pass; building the shapes of the layer hoisting
            # with it on set off full collections, up to 0.8 s)
            with collection_paused(len(out)):
                with _spending(submission):
                    graph = plain()
                order_as_plain(graph, out, submission.ordering)

    def deduplicated(
        self, dsk: Graph, settings: Settings, submission: Submission, memo: FingerprintMemo | None = None
    ) -> Graph:
        """The pass on ``dsk``; a graph of one task also counts other graphs of this scheduler."""
        if len(dsk) == 1 and settings.min_count > 1 and not settings.dry_run:
            # within one task nothing reaches min-count: only other graphs can
            return self._across_graphs(dsk, settings, submission)
        return deduplicate_graph(dsk, settings, place=placement_for(settings), memo=memo)  # type: ignore[return-value]

    def _across_graphs(self, dsk: Graph, settings: Settings, submission: Submission) -> Graph:
        # client.submit sends one task per graph: a large argument there is
        # shared by the tasks of successive graphs, which min-count counts
        # together; once its key exists, later graphs reference it
        keys = content_keys(next(iter(dsk.values())), settings)
        if not keys:
            return dsk
        with self._recent_lock:
            seen = {key: self._recent.get(key, 0) for key in keys}
            for key in keys:
                self._recent[key] = seen[key] + 1
                self._recent.move_to_end(key)
            while len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)
        if any(submission.live(key) or seen[key] + 1 >= settings.min_count for key in keys):
            return deduplicate_graph(dsk, dataclasses.replace(settings, min_count=1), place=placement_for(settings))  # type: ignore[return-value]
        return dsk


def config_route_slots(expr: Any) -> list[tuple[Any, int, Deduplicator]]:
    """``(expression, operand index, pass)`` for each config-route pass set as a low-level optimizer.

    >>> config_route_slots(object())
    []
    """
    slots = []
    for node in expressions(expr):
        parameters = getattr(type(node), "_parameters", ())
        if "low_level_optimizer" in parameters:
            index = parameters.index("low_level_optimizer")
            optimizer = node.operands[index]
            if isinstance(optimizer, Deduplicator):
                slots.append((node, index, optimizer))
    return slots


def winning_settings(passes: list[Deduplicator], client_settings: Mapping[str, Any] | None) -> Settings | None:
    """The config route's settings, else the client's, else this process's (see the module doc).

    None: the client's settings were invalid, and it asked for plain dask (``wire.PLAIN``).
    """
    if passes:
        chosen = passes[0].effective_settings()
        if any(p.effective_settings() != chosen for p in passes[1:]):
            logger.debug("dedupgraph: the graph's passes differ in settings; the first one's apply to all")
        return chosen
    if client_settings is not None:
        return None if wants_plain(client_settings) else from_wire(client_settings)
    return Settings.from_config()


def _report_failure(error: Exception) -> None:
    # an invalid setting fails every graph alike: one WARNING per setting and process
    # (a client in this process may have warned already), the rest at DEBUG
    level = logging.WARNING if not isinstance(error, ValueError) or first_report(error) else logging.DEBUG
    logger.log(level, "dedupgraph scheduler route failed; graph left unchanged: %s", error, exc_info=True)


def content_keys(node: Any, settings: Settings) -> set[str]:
    """The hoisted keys the pass would give the large contents that one task carries."""
    from dedupgraph.core.plan import hoisted_key
    from dedupgraph.core.transform import walk_leaves

    memo = FingerprintMemo.for_pass(settings)
    keys: set[str] = set()

    def record(value: Any, where: str) -> None:
        fp = memo.fingerprint(value)
        if fp is not None and fp.nbytes >= settings.min_bytes:
            keys.add(hoisted_key(fp))

    walk_leaves(node, record)
    return keys


@contextlib.contextmanager
def _spending(submission: Submission) -> Iterator[None]:
    start = time.thread_time()
    try:
        yield
    finally:
        submission.spent += time.thread_time() - start


def _nothing_large(expr: Any, settings: Settings, memo: FingerprintMemo | None = None) -> bool:
    """Whether the graph's layers show, before it is materialized, that the pass would hoist nothing."""
    from dedupgraph.core.prescan import nothing_large

    try:
        return nothing_large(expr, settings, known=known_optimizer, memo=memo)
    except Exception:  # only a shortcut: the pass decides
        logger.debug("dedupgraph: reading the layers failed; the pass runs", exc_info=True)
        return False


def _layer_hoisting(expr: Any, settings: Settings, memo: FingerprintMemo) -> LayerHoisting | None:
    """The layer hoisting put in place of ``expr``'s array optimizer, where it fits (``routes.scheduler_layers``)."""
    try:
        return installed(expr, settings, memo)
    except Exception:  # only cheaper: the pass runs after materializing
        logger.debug("dedupgraph: setting up the hoisting in the layers failed; the pass runs", exc_info=True)
        return None


def _culled_later(expr: Any) -> bool:
    # distributed culls low-level graphs against the keys after materializing, then orders
    # what remains: only it can order those the way it always does
    from dask._expr import LLGExpr

    return isinstance(expr, LLGExpr)


def order_as_plain(dsk: Graph, out: Graph, ordering: dict[Hashable, int]) -> None:
    """Fill ``ordering`` with the priorities ``dask.order`` gives plain dask's graph ``dsk``.

    >>> from dask._task_spec import DataNode, Task, TaskRef
    >>> plain = {"a": Task("a", len, "xy"), "b": Task("b", len, "xy")}
    >>> hoisted = {"a": Task("a", len, TaskRef("k")), "b": Task("b", len, TaskRef("k")), "k": DataNode("k", "xy")}
    >>> import dask.order
    >>> ordering = {}
    >>> order_as_plain(plain, hoisted, ordering)
    >>> ordering == {**dask.order.order(plain), "k": -1}
    True

    Distributed then skips its own ``dask.order`` (one ordering either way):
    the tasks get exactly the priorities they have without dedupgraph, and
    each hoisted key one before them all.  Ordering the rewritten graph would
    also cost a little more: a key that every task depends on (measured, 60,000
    array tasks: 2.87 s against 2.64 s of CPU, medians of 6).
    """
    import dask.order

    priorities = dask.order.order(dsk)
    first = min(priorities.values(), default=0) - 1
    for key in out:
        if key not in priorities:
            priorities[key] = first
    ordering.update(priorities)


def keep_plain(
    hoisted: list[Hashable], out: Graph, annotations_by_type: AnnotationsByType, submission: Submission
) -> None:
    """Make the ``hoisted`` keys of ``out`` plain data, and leave every other task as plain dask has it.

    - Global annotations (``dask.annotate`` around ``compute``, or its
      ``workers=``, ``resources=``, ``retries=``, ``priority=``) would reach
      every new task, the hoisted keys too: they become per-key annotations
      of the other tasks, with the same precedence as distributed gives them.
    - ``internal_priority`` sent by the client (``client.map``, ``submit``)
      covers its tasks only: a hoisted key gets one before all of them.
    """
    if not hoisted:
        return
    moved: dict[str, dict[Hashable, Any]] = {}
    if submission.annotations:
        added = set(hoisted)
        for name, value in submission.annotations.items():
            by_key = dict(annotations_by_type.get(name, {}))
            for key in out:
                if key not in added and by_key.get(key) is None:
                    by_key[key] = value(key) if callable(value) else value
            moved[name] = by_key
    first = None
    if submission.priorities:
        first = min(submission.priorities.values()) - 1
    # nothing above can fail half-way through a change; below, plain assignments
    for name, by_key in moved.items():
        annotations_by_type[name] = by_key
    if submission.annotations:
        submission.annotations.clear()
    if first is not None:
        for key in hoisted:
            submission.priorities.setdefault(key, first)  # type: ignore[union-attr]
