"""What the scheduler route does with one submitted graph, in the scheduler's materialization thread.

>>> from dask._task_spec import Task
>>> big = bytes(range(256)) * 1000
>>> graph = {"a": Task("a", len, big), "b": Task("b", len, big)}
>>> route = Route()
>>> out, annotations = route.handle(lambda expr, validate: (dict(expr), {}), graph, False, Submission())
>>> sorted(key.rsplit("-", 1)[0] for key in out)
['a', 'b', 'dedup-bytes']

Per graph: (1) find the config route's passes in the expression (a client
with ``dedupgraph.enable()`` ships a ``Deduplicator`` as the low-level
optimizer of its arrays, delayed values and bags) and put their base
optimizers in their place, so that the graph is deduplicated once, here,
with one walk; (2) materialize as distributed does, a graph of arrays with
the broadcast arguments of its layers hoisted first where that does all the
pass would (``dedupgraph.core.layer_hoisting``); (3) otherwise
deduplicate the result with the pass and the settings that win,
unless the graph's layers already showed that nothing in it is large
(``dedupgraph.core.prescan``); (4) keep the task keys, annotations and
priorities exactly as plain dask gives them (``dask.order`` runs on plain
dask's graph, or on the hoisted one shaped as plain dask's), the hoisted
keys being data without any.

Settings, first that applies: those of the config route's passes found in
the expression (the client's, when it submitted); those the client sent
with the graph (``dedupgraph.routes.distributed.wire``); this scheduler's own ``dask.config``.

Any exception leaves the graph as distributed materializes it, with one
WARNING.

What the route did with each graph (outcome, hoisted objects, bytes
removed, CPU time) becomes one record at the end, for the scheduler
plugin's account (``dedupgraph.routes.distributed.records``): two clock
readings per graph and one entry per hoisted object, nothing per task.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import GraphNode

from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.layer_hoisting import LayerHoisting, installed
from dedupgraph.core.pipeline import Graph, announce, collection_paused, deduplicate_with_plan
from dedupgraph.core.plan import Plan
from dedupgraph.core.prescan import expressions, nothing_large
from dedupgraph.once import Once
from dedupgraph.placement import in_graph
from dedupgraph.routes.config import Deduplicator
from dedupgraph.routes.distributed.hook import AnnotationsByType, Materialize
from dedupgraph.routes.distributed.records import (
    DEDUPLICATED,
    DRY_RUN,
    FAILED,
    LAYERS_DECLINED,
    LAYERS_FAILED,
    MATERIALIZATION_RAISED,
    NOTHING_LARGE,
    NOTHING_TO_HOIST,
    PASS,
    PRESCAN_FAILED,
    SETTINGS,
    UNCHANGED,
    GraphRecord,
    HoistedObject,
)
from dedupgraph.routes.distributed.reuse import Content
from dedupgraph.routes.distributed.wire import from_wire, wants_plain
from dedupgraph.settings import Settings, first_report

logger = logging.getLogger("dedupgraph")

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
    #: filled by the route: the objects hoisted in this graph, under their keys, and the
    #: ``reuse-limit`` of the settings that governed it (what the scheduler may keep of them)
    hoisted: tuple[HoistedObject, ...] = ()
    reuse_limit: float | int = 0
    #: filled by the route: graph key -> what the pass made of the object, for the keys of ``hoisted``
    contents: dict[Hashable, Content] = field(default_factory=dict)
    #: objects the scheduler put back into this graph (``dedupgraph.routes.distributed.uploads``):
    #: their fingerprints are known, and not taken again
    restored: list[Content] = field(default_factory=list)


class Route:
    """The route of one scheduler: stateless per graph, except the keys recent single-task graphs carried.

    ``observer``: given one :class:`~dedupgraph.routes.distributed.records.GraphRecord`
    per graph, at the end of the route's work on it (the scheduler plugin's
    account of its graphs); whatever it raises is logged and swallowed.
    """

    def __init__(self, observer: Observer | None = None) -> None:
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.observer = observer

    def handle(
        self, materialize: Materialize, expr: Any, validate: bool, submission: Submission
    ) -> tuple[Graph, AnnotationsByType]:
        """``materialize(expr, validate)`` (distributed's), deduplicated: what the hook returns for it."""
        started = time.thread_time()
        notes = _Notes()
        try:
            return self._handled(materialize, expr, validate, submission, notes)
        finally:
            if notes.outcome == DEDUPLICATED:
                submission.hoisted, submission.reuse_limit = notes.hoisted, notes.reuse_limit
                submission.contents = notes.contents
            if self.observer is not None:
                self._tell(notes, time.thread_time() - started)

    def _handled(
        self, materialize: Materialize, expr: Any, validate: bool, submission: Submission, notes: _Notes
    ) -> tuple[Graph, AnnotationsByType]:
        try:
            slots = config_route_slots(expr)
            settings = winning_settings([slot[2] for slot in slots], submission.client_settings)
            if settings is None:  # the client's settings were invalid: it asked for plain dask
                return notes.counted(materialize(expr, validate), UNCHANGED, SETTINGS)
            memo = FingerprintMemo.for_pass(settings)  # the prescan's and the pass's: one pickle per object
            for content in submission.restored:
                memo.seed(content.value, content.fingerprint)
            notes.reuse_limit = settings.reuse_limit
        except Exception as e:
            _report_failure(e)
            return notes.counted(materialize(expr, validate), FAILED, SETTINGS)
        for node, index, pass_ in slots:
            # one pass per graph: the config route's runs here, on the whole graph, below
            node.operands[index] = pass_.base
        if _nothing_large(expr, settings, memo, notes):  # the layers showed nothing large: no walk
            return notes.counted(materialize(expr, validate), UNCHANGED, NOTHING_LARGE)
        layers = _layer_hoisting(expr, settings, memo, notes)
        dsk, annotations_by_type = materialize(expr, validate)
        notes.tasks = len(dsk)
        if layers is not None and layers.declined:
            notes.fallbacks.append(LAYERS_FAILED if layers.failed else LAYERS_DECLINED)
        try:
            if layers is not None and layers.plans:
                # dask's optimizer ran on hoisted layers: no walk, no pass (and, were there a call
                # that declined, its tasks stay as dask made them: the pass must not meet a key
                # hoisted already)
                out = dsk
                hoisted = [h.key for plan in layers.plans for h in plan.hoists.values() if h.key in dsk]
                notes.tasks -= len(set(hoisted))  # materialized with the hoisted keys in it
                for plan in layers.plans:
                    announce(plan, settings)
                plain: Callable[[], Mapping[Hashable, Any]] | None = None
                if layers.applied:
                    plain = lambda: as_plain_shapes(dsk, set(hoisted))  # noqa: E731
                plans = layers.plans
            else:
                plans = []
                out = self.deduplicated(dsk, settings, submission, memo, plans=plans)
                if out is dsk:
                    planned = any(plans)
                    notes.outcome, notes.cause = UNCHANGED, DRY_RUN if settings.dry_run and planned else NOTHING_TO_HOIST
                    return dsk, annotations_by_type
                hoisted = [key for key in out if key not in dsk]
                plain = None if _culled_later(expr) else (lambda: dsk)
            self._as_plain(out, hoisted, plain, annotations_by_type, submission)
            notes.hoisted, notes.contents = hoisted_objects(plans, hoisted)
            notes.outcome, notes.cause = (DEDUPLICATED, "") if notes.hoisted else (UNCHANGED, NOTHING_TO_HOIST)
            return out, annotations_by_type
        except Exception:
            logger.warning("dedupgraph scheduler route failed; graph left as distributed materialized it", exc_info=True)
            if submission.ordering:
                submission.ordering.clear()  # distributed orders the graph itself
            notes.outcome, notes.cause, notes.hoisted = FAILED, PASS, ()
            return dsk, annotations_by_type

    def _tell(self, notes: _Notes, cpu_seconds: float) -> None:
        """Hand the graph's record to the observer; never raises (observing must not fail a graph)."""
        try:
            assert self.observer is not None
            self.observer(notes.record(cpu_seconds))
        except Exception:
            if _observer_failure_told():
                logger.warning("dedupgraph: recording a graph for the metrics failed (said once)", exc_info=True)
            else:
                logger.debug("dedupgraph: recording a graph for the metrics failed", exc_info=True)

    @staticmethod
    def _as_plain(
        out: Graph,
        hoisted: list[Hashable],
        plain: Callable[[], Mapping[Hashable, Any]] | None,
        annotations_by_type: AnnotationsByType,
        submission: Submission,
    ) -> None:
        """Keep ``out``'s tasks as plain dask has them: annotations, and the priorities of ordering ``plain()``.

        ``plain``: plain dask's graph as ``dask.order`` sees it, or None where
        distributed must order (it culls a low-level graph first).
        """
        keep_plain(hoisted, out, annotations_by_type, submission)
        if plain is not None and submission.ordering is not None:
            # instead of distributed's own, with the collector paused as in the pass: the graph
            # was just built, and walking its young objects again and again costs more than
            # the pass itself (docs/benchmarks.rst, "Measurements behind the code")
            with collection_paused(len(out)):
                order_as_plain(plain(), out, submission.ordering)

    def deduplicated(
        self,
        dsk: Graph,
        settings: Settings,
        submission: Submission,
        memo: FingerprintMemo | None = None,
        plans: list[Plan] | None = None,
    ) -> Graph:
        """The pass on ``dsk``; a graph of one task also counts other graphs of this scheduler.

        ``plans``: gets the plan the pass followed, for the graph's record.
        """
        if len(dsk) == 1 and settings.min_count > 1 and not settings.dry_run:
            # within one task nothing reaches min-count: only other graphs can
            out, plan = self._across_graphs(dsk, settings, submission)
        else:
            out, plan = deduplicate_with_plan(dsk, settings, place=in_graph(settings), memo=memo)
            out = _as_dict(out)
        if plans is not None:
            plans.append(plan)
        return out

    def _across_graphs(self, dsk: Graph, settings: Settings, submission: Submission) -> tuple[Graph, Plan]:
        # client.submit sends one task per graph: a large argument there is
        # shared by the tasks of successive graphs, which min-count counts
        # together; once its key exists, later graphs reference it
        keys = content_keys(next(iter(dsk.values())), settings)
        if not keys:
            return dsk, Plan({})
        with self._recent_lock:
            seen = {key: self._recent.get(key, 0) for key in keys}
            for key in keys:
                self._recent[key] = seen[key] + 1
                self._recent.move_to_end(key)
            while len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)
        if any(submission.live(key) or _pays_across(nbytes, seen[key] + 1, settings) for key, nbytes in keys.items()):
            out, plan = deduplicate_with_plan(dsk, dataclasses.replace(settings, min_count=1), place=in_graph(settings))
            return _as_dict(out), plan
        return dsk, Plan({})


def _pays_across(nbytes: int, graphs: int, settings: Settings) -> bool:
    """Whether a content that ``graphs`` one-task graphs carried is worth a key, as the pass would judge ``graphs`` tasks."""
    from dedupgraph.core.plan import why_inline

    return graphs >= 2 and why_inline(nbytes, graphs, settings) is None


#: what the route hands each graph's record to
Observer = Callable[[GraphRecord], None]

_observer_failure_told = Once()


class _Notes:
    """What the route learns about one graph while it works on it; a :class:`GraphRecord` at the end."""

    __slots__ = ("outcome", "cause", "tasks", "hoisted", "fallbacks", "reuse_limit", "contents")

    def __init__(self) -> None:
        # left so only when distributed's materialization raised: nothing else escapes the route
        self.outcome, self.cause = UNCHANGED, MATERIALIZATION_RAISED
        self.tasks = 0
        self.hoisted: tuple[HoistedObject, ...] = ()
        self.fallbacks: list[str] = []
        self.reuse_limit: float | int = 0
        self.contents: dict[Hashable, Content] = {}

    def counted(self, materialized: tuple[Graph, AnnotationsByType], outcome: str, cause: str) -> tuple[Graph, AnnotationsByType]:
        """``materialized``, noted as the graph's outcome."""
        self.outcome, self.cause, self.tasks = outcome, cause, len(materialized[0])
        return materialized

    def record(self, cpu_seconds: float) -> GraphRecord:
        return GraphRecord(self.outcome, self.cause, self.tasks, self.hoisted, cpu_seconds, tuple(self.fallbacks))


def hoisted_objects(plans: list[Plan], added: list[Hashable]) -> tuple[tuple[HoistedObject, ...], dict[Hashable, Content]]:
    """The hoisted objects of ``plans``, each under the key it got in the graph (one of ``added``), and their contents.

    >>> from dedupgraph.core.fingerprint import Fingerprint
    >>> from dedupgraph.core.plan import Hoist
    >>> hoist = Hoist("dedup-ndarray-" + "0" * 32, Fingerprint("0" * 32, 2400, "ndarray"), ("a", "b"), None)
    >>> objects, contents = hoisted_objects([Plan({"0" * 32: hoist})], ["dedup-host-ndarray-" + "0" * 32])
    >>> [h.key for h in objects], [c.key for c in contents.values()]
    (['dedup-host-ndarray-00000000000000000000000000000000'], ['dedup-ndarray-00000000000000000000000000000000'])

    With ``share="host"`` an object placed in shared memory lives under a
    key of its own, which ends as the plan's key does; its :class:`Content`
    keeps the plan's key, the one its content gives.
    """
    added_keys = [key for key in added if isinstance(key, str)]
    objects: dict[str, HoistedObject] = {}
    contents: dict[Hashable, Content] = {}
    for plan in plans:
        for hoist in plan.hoists.values():
            key: str | None = hoist.key
            if key not in added_keys:
                tail = hoist.key.removeprefix("dedup-")
                key = next((k for k in added_keys if k.endswith(tail)), None)
            if key is not None:
                objects[key] = HoistedObject(key, hoist.fingerprint.label, hoist.fingerprint.nbytes, len(hoist.tasks))
                contents[key] = Content(hoist.key, hoist.fingerprint, hoist.value)
    return tuple(objects.values()), contents


def _as_dict(graph: Mapping[Hashable, Any]) -> Graph:
    # the pass gives back the very dict it was given when it hoists nothing: keep it so
    return graph if isinstance(graph, dict) else dict(graph)


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


def content_keys(node: Any, settings: Settings) -> dict[str, int]:
    """The hoisted keys the pass would give the large contents that one task carries, and their sizes."""
    from dedupgraph.core.plan import hoisted_key
    from dedupgraph.core.transform import walk_leaves

    memo = FingerprintMemo.for_pass(settings)
    keys: dict[str, int] = {}

    def record(value: Any, where: str) -> None:
        fp = memo.fingerprint(value)
        if fp is not None and fp.nbytes >= settings.smallest_hoisted:
            keys[hoisted_key(fp)] = fp.nbytes

    walk_leaves(node, record)
    return keys


def _nothing_large(expr: Any, settings: Settings, memo: FingerprintMemo, notes: _Notes) -> bool:
    """Whether the graph's layers show, before it is materialized, that the pass would hoist nothing."""
    try:
        return nothing_large(expr, settings, memo=memo)
    except Exception:  # only a shortcut: the pass decides
        logger.debug("dedupgraph: reading the layers failed; the pass runs", exc_info=True)
        notes.fallbacks.append(PRESCAN_FAILED)
        return False


def _layer_hoisting(expr: Any, settings: Settings, memo: FingerprintMemo, notes: _Notes) -> LayerHoisting | None:
    """The layer hoisting put in place of ``expr``'s array optimizer, where it fits (``dedupgraph.core.layer_hoisting``)."""
    try:
        return installed(expr, settings, memo)
    except Exception:  # only cheaper: the pass runs after materializing
        logger.debug("dedupgraph: setting up the hoisting in the layers failed; the pass runs", exc_info=True)
        notes.fallbacks.append(LAYERS_FAILED)
        return None


def _culled_later(expr: Any) -> bool:
    # distributed culls low-level graphs against the keys after materializing, then orders
    # what remains: only it can order those the way it always does
    from dask._expr import LLGExpr

    return isinstance(expr, LLGExpr)


def order_as_plain(dsk: Mapping[Hashable, Any], out: Graph, ordering: dict[Hashable, int]) -> None:
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
    also cost a little more, for a key that every task depends on
    (docs/benchmarks.rst, "Measurements behind the code").
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
    priorities = submission.priorities
    first = min(priorities.values()) - 1 if priorities else None
    # nothing above can fail half-way through a change; below, plain assignments
    for name, by_key in moved.items():
        annotations_by_type[name] = by_key
    if submission.annotations:
        submission.annotations.clear()
    if priorities and first is not None:
        for key in hoisted:
            priorities.setdefault(key, first)


class _Shape(GraphNode):
    """A task as ``dask.order`` sees it: a key, whether it is a task, and its dependencies."""

    __slots__ = ()

    def __init__(self, key: Hashable, dependencies: frozenset[Hashable]) -> None:
        self.key = key
        self._dependencies = dependencies


def as_plain_shapes(out: Mapping[Hashable, Any], hoisted: set[Hashable]) -> dict[Hashable, Any]:
    """``out`` without its ``hoisted`` keys, as ``dask.order`` would see plain dask's graph.

    >>> from dask._task_spec import DataNode, Task, TaskRef
    >>> out = {"k": DataNode("k", 1), "a": Task("a", len, TaskRef("k")), "b": Task("b", sum, [TaskRef("a")])}
    >>> shapes = as_plain_shapes(out, {"k"})
    >>> sorted(shapes), shapes["a"].dependencies, shapes["b"] is out["b"]
    (['a', 'b'], frozenset(), True)

    ``dask.order`` reads each node's dependencies and whether it is a task,
    nothing else: where the layer hoisting left every task as plain dask
    has it, bar the hoisted dependency, this orders as plain dask does.
    """
    shapes: dict[Hashable, Any] = {}
    for key, node in out.items():
        if key in hoisted:
            continue
        deps = node.dependencies
        shapes[key] = _Shape(key, deps - hoisted) if not deps.isdisjoint(hoisted) else node
    return shapes
