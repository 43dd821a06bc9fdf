"""The pass, stage by stage: fingerprint the candidates, plan what to hoist, rewrite the graph.

>>> from dask._task_spec import Task
>>> from dedupgraph.settings import Settings
>>> table = list(range(50_000))
>>> candidates, plan = planned({"a": Task("a", len, table), "b": Task("b", len, table)}, Settings())
>>> [(hoist.key.rsplit("-", 1)[0], sorted(hoist.tasks)) for hoist in plan.hoists.values()]
[('dedup-list', ['a', 'b'])]

Pure graph-to-graph code: the routes (``dedupgraph.routes``) decide when it
runs, with which settings, and where a hoisted object lives (``place``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from dask.highlevelgraph import HighLevelGraph
from dask.utils import ensure_dict

from dedupgraph.compat import MISSING_INTERNALS
from dedupgraph.settings import Settings

if not MISSING_INTERNALS:  # without them the stages cannot even be imported: the pass is off
    from dask._task_spec import GraphNode, convert_legacy_graph

    from dedupgraph.core.candidates import Candidates, find_candidates
    from dedupgraph.core.fingerprint import FingerprintMemo
    from dedupgraph.core.immutability import merge_policy
    from dedupgraph.core.layers import relayered
    from dedupgraph.core.plan import NOTABLE_BYTES, Plan, plan_hoists
    from dedupgraph.core.rewrite import Place, rewrite_graph

logger = logging.getLogger("dedupgraph")

#: A materialized task graph, as the pass reads and writes it: key -> ``dask._task_spec`` node
Graph = dict[Hashable, "GraphNode"]

def deduplicate_graph(
    dsk: Mapping[Hashable, Any], settings: Settings, place: Place | None = None, memo: FingerprintMemo | None = None
) -> Mapping[Hashable, Any]:
    """``dsk`` with its repeated large objects hoisted; ``dsk`` itself if nothing is.

    ``place``: how a route stores a hoisted object other than as plain data
    under its key (``share="host"``); see :func:`dedupgraph.core.rewrite.rewrite_graph`.
    ``memo``: the fingerprints a prescan of the same graph made (``dedupgraph.core.prescan``), so
    that no object is pickled twice.

    >>> from dask._task_spec import Task
    >>> big = list(range(50_000))
    >>> out = deduplicate_graph({"a": Task("a", len, big), "b": Task("b", len, big)}, Settings())
    >>> sorted(k.rsplit("-", 1)[0] for k in out)
    ['a', 'b', 'dedup-list']
    """
    return deduplicate_with_plan(dsk, settings, place, memo)[0]


def deduplicate_with_plan(
    dsk: Mapping[Hashable, Any], settings: Settings, place: Place | None = None, memo: FingerprintMemo | None = None
) -> tuple[Mapping[Hashable, Any], Plan]:
    """:func:`deduplicate_graph`, and the plan it followed (empty where nothing is hoisted).

    >>> from dask._task_spec import Task
    >>> big = list(range(50_000))
    >>> out, plan = deduplicate_with_plan({"a": Task("a", len, big), "b": Task("b", len, big)}, Settings())
    >>> [(hoist.fingerprint.label, len(hoist.tasks)) for hoist in plan.hoists.values()]
    [('list', 2)]

    For a dry run the plan says what would be hoisted, and the graph is ``dsk``.
    """
    graph = task_graph(dsk)
    with collection_paused(len(graph)):
        out, plan = _deduplicated(dsk, graph, settings, place, memo)
        if out is dsk or not isinstance(dsk, HighLevelGraph):
            return out, plan
        # dask reads annotations from the layers of what an optimizer returns
        changed = [key for key, node in graph.items() if out[key] is not node]
        return relayered(dsk, out, changed), plan


def _deduplicated(
    dsk: Mapping[Hashable, Any],
    graph: dict[Hashable, GraphNode],
    settings: Settings,
    place: Place | None,
    memo: FingerprintMemo | None,
) -> tuple[Mapping[Hashable, Any], Plan]:
    candidates, plan = planned(graph, settings, memo=memo)
    if not plan or settings.dry_run:
        return dsk, plan
    return rewrite_graph(graph, plan, candidates, place=place, check_mutation=settings.check_mutation), plan


def planned(
    graph: Mapping[Hashable, GraphNode], settings: Settings, source: str = "", memo: FingerprintMemo | None = None
) -> tuple[Candidates, Plan]:
    """Stages 1 and 2 on a graph of ``GraphNode``s, and the INFO line if anything is hoisted.

    ``source`` starts the line (``"deduplicate: "``) where the pass is not the caller.
    """
    if memo is None:
        memo = FingerprintMemo.for_pass(settings)
    may_merge = merge_policy(settings.merge_equal)
    # at DEBUG stage 2 names the equal copies it keeps apart, single-use ones included
    carriers = 1 if logger.isEnabledFor(logging.DEBUG) else settings.min_count
    candidates = find_candidates(
        graph, memo, record_from_bytes=recorded_from(settings), may_merge=may_merge, min_carriers=carriers
    )
    plan = plan_hoists(candidates, settings)
    announce(plan, settings, source)
    return candidates, plan


def announce(plan: Plan, settings: Settings, source: str = "") -> None:
    """The pass's INFO line for ``plan``, if it hoists anything."""
    if plan:
        summary = plan.summary()
        line = f"dry run: {summary.message(would=True)}" if settings.dry_run else summary.message()
        logger.info("%s%s", source, line)


def recorded_from(settings: Settings) -> int:
    """The smallest content stage 1 records: the smallest size hoisted, or less when logs want it.

    At DEBUG, and in a dry run at INFO, stage 2 names the notable contents it
    leaves inline, the smaller ones included; otherwise recording them would
    be wasted work.
    """
    if logger.isEnabledFor(logging.DEBUG) or (settings.dry_run and logger.isEnabledFor(logging.INFO)):
        return min(NOTABLE_BYTES, settings.smallest_hoisted)
    return settings.smallest_hoisted


# Below this many tasks the cyclic garbage collector costs the pass nothing worth avoiding.
_PAUSE_GC_FROM_TASKS = 10_000


@contextlib.contextmanager
def collection_paused(ntasks: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while the pass runs on a large graph.

    The rewrite builds one node per carrying task right after dask built the
    whole graph, whose objects still fill the young generations: automatic
    collections then walk the graph again and again, which can take longer
    than the rewrite itself (docs/benchmarks.rst, "Measurements behind the
    code").  The pass makes no
    reference cycles, so nothing waits for the collector.  Concurrent passes
    are safe: only a pass that found the collector on turns it back on.
    """
    if ntasks < _PAUSE_GC_FROM_TASKS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def task_graph(dsk: Mapping[Hashable, Any]) -> Graph:
    """A plain dict of ``GraphNode``s; entries that are already nodes keep their identity."""
    graph = ensure_dict(dsk)
    if all(isinstance(v, GraphNode) for v in graph.values()):
        return graph
    return convert_legacy_graph(graph)
