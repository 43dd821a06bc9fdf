"""The pass: fingerprint the candidates, plan what to hoist, rewrite the graph.

>>> import dask, dask.array as da
>>> import dedupgraph
>>> with dask.config.set(array_optimize=dedupgraph.dedup):
...     total = da.ones(10, chunks=2).map_blocks(lambda b, t: b + len(t), list(range(40_000))).sum()
...     int(total.compute())
400010

``dedup``, ``dedup_delayed`` and ``dedup_bag`` run dask's own optimization of
their collection first (culling, fusion) and deduplicate its output.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

import dask
from dask.highlevelgraph import HighLevelGraph
from dask.utils import ensure_dict

from dedupgraph.compat import MISSING_INTERNALS
from dedupgraph.settings import Settings

if not MISSING_INTERNALS:  # without them the stages cannot even be imported: the pass is off
    from dask._task_spec import GraphNode, convert_legacy_graph

    from dedupgraph.candidates import Candidates, find_candidates
    from dedupgraph.fingerprint import FingerprintMemo
    from dedupgraph.immutability import merge_policy
    from dedupgraph.layers import relayered
    from dedupgraph.plan import NOTABLE_BYTES, Plan, plan_hoists
    from dedupgraph.rewrite import rewrite_graph

logger = logging.getLogger("dedupgraph")

Optimizer = Callable[..., Mapping[Hashable, Any]]


def deduplicate_graph(dsk: Mapping[Hashable, Any], settings: Settings) -> Mapping[Hashable, Any]:
    """``dsk`` with its repeated large objects hoisted; ``dsk`` itself if nothing is.

    >>> from dask._task_spec import Task
    >>> big = list(range(50_000))
    >>> out = deduplicate_graph({"a": Task("a", len, big), "b": Task("b", len, big)}, Settings())
    >>> sorted(k.rsplit("-", 1)[0] for k in out)
    ['a', 'b', 'dedup-list']
    """
    graph = task_graph(dsk)
    with _collection_paused(len(graph)):
        out = _deduplicated(dsk, graph, settings)
        if out is dsk or not isinstance(dsk, HighLevelGraph):
            return out
        # dask reads annotations from the layers of what an optimizer returns
        changed = [key for key, node in graph.items() if out[key] is not node]
        return relayered(dsk, out, changed)


def _deduplicated(
    dsk: Mapping[Hashable, Any], graph: dict[Hashable, GraphNode], settings: Settings
) -> Mapping[Hashable, Any]:
    candidates, plan = planned(graph, settings)
    if not plan or settings.dry_run:
        return dsk
    place = None
    if settings.share == "host":  # the stages never import shared-memory code: this route passes it in
        from dedupgraph.host_share import placement

        place = placement(settings)
    return rewrite_graph(graph, plan, candidates, place=place)


def planned(graph: Mapping[Hashable, GraphNode], settings: Settings, source: str = "") -> tuple[Candidates, Plan]:
    """Stages 1 and 2 on a graph of ``GraphNode``s, and the INFO line if anything is hoisted.

    ``source`` starts the line (``"deduplicate: "``) where the pass is not the caller.
    """
    memo = FingerprintMemo(settings.min_bytes, frozenset(settings.exclude))
    may_merge = merge_policy(settings.merge_equal)
    candidates = find_candidates(graph, memo, record_from_bytes=recorded_from(settings), may_merge=may_merge)
    plan = plan_hoists(candidates, settings)
    if plan:
        summary = plan.summary()
        line = f"dry run: {summary.message(would=True)}" if settings.dry_run else summary.message()
        logger.info("%s%s", source, line)
    return candidates, plan


def recorded_from(settings: Settings) -> int:
    """The smallest content stage 1 records: ``min_bytes``, or less when DEBUG logs want it.

    At DEBUG, stage 2 names every notable content it leaves inline, the ones
    below ``min_bytes`` included; otherwise recording them would be wasted work.
    """
    if logger.isEnabledFor(logging.DEBUG):
        return min(NOTABLE_BYTES, settings.min_bytes)
    return settings.min_bytes


# Below this many tasks the cyclic garbage collector costs the pass nothing worth avoiding.
_PAUSE_GC_FROM_TASKS = 10_000


@contextlib.contextmanager
def _collection_paused(ntasks: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while the pass runs on a large graph.

    The rewrite builds one node per carrying task right after dask built the
    whole graph, whose objects still fill the young generations: automatic
    collections then walk the graph again and again (measured: the rewrite
    of 20,000 tasks took 0.41 s instead of 0.12 s).  The pass makes no
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


def task_graph(dsk: Mapping[Hashable, Any]) -> dict[Hashable, GraphNode]:
    """A plain dict of ``GraphNode``s; entries that are already nodes keep their identity."""
    graph = ensure_dict(dsk)
    if all(isinstance(v, GraphNode) for v in graph.values()):
        return graph
    return convert_legacy_graph(graph)


class Deduplicator:
    """A dask optimizer: runs ``base``, then hoists repeated large objects into shared keys.

    >>> import dask
    >>> from dask.array.optimization import optimize
    >>> opt = Deduplicator(base=optimize, min_bytes="1 MiB")
    >>> opt
    Deduplicator(base=optimize, min_bytes=1048576, min_count=2, dry_run=False, exclude=(), hint_bytes=10485760, merge_equal='immutable', share='process', share_min_bytes=1048576, share_limit=0.5)
    >>> with dask.config.set(array_optimize=opt):
    ...     pass

    Without explicit settings it reads ``dask.config["dedupgraph"]`` when it runs,
    and when pickled (as distributed does, to run it on the scheduler) it carries
    the settings in force in the pickling process with it.
    """

    def __init__(self, base: Optimizer | None = None, **settings: Any) -> None:
        if base is not None and not callable(base):
            raise ValueError(f"Deduplicator argument 'base' must be callable or None, got {base!r}")
        self.base = base
        self.settings: Settings | None = Settings.from_config(**settings) if settings else None

    @classmethod
    def _with_settings(cls, base: Optimizer | None, settings: Settings) -> Deduplicator:
        new = cls(base)
        new.settings = settings
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return (Deduplicator._with_settings, (self.base, self.effective_settings()))

    def effective_settings(self) -> Settings:
        """The settings a call would use now."""
        return self.settings if self.settings is not None else Settings.from_config()

    def __call__(self, dsk: Mapping[Hashable, Any], keys: Any, **kwargs: Any) -> Mapping[Hashable, Any]:
        settings = self.effective_settings()
        if MISSING_INTERNALS:
            _warn_unsupported()
            return self.base(dsk, keys, **kwargs) if self.base is not None else dsk
        if _nothing_large_before(self.base, dsk, settings):
            # the layers hold nothing the pass could hoist, and dask's own optimizers
            # make no new large values: no walk over the optimized tasks
            return self.base(dsk, keys, **kwargs) if self.base is not None else dsk
        if self.base is not None:
            dsk = self.base(dsk, keys, **kwargs)
        try:
            return deduplicate_graph(dsk, settings)
        except Exception:
            # the promise: never fail a computation that would succeed without us
            logger.warning("dedupgraph pass failed; graph left unchanged", exc_info=True)
            return dsk

    def __repr__(self) -> str:
        base = getattr(self.base, "__name__", repr(self.base)).lstrip("_")
        if self.settings is None:
            return f"Deduplicator(base={base})"
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self.settings).items())
        return f"Deduplicator(base={base}, {fields})"


def _nothing_large_before(base: Optimizer | None, dsk: Mapping[Hashable, Any], settings: Settings) -> bool:
    """Whether ``dsk``'s layers, before ``base`` (one of dask's own optimizers) runs, show nothing to hoist.

    Reading the layers of a ``HighLevelGraph`` is cheaper than walking the
    optimized tasks (``dedupgraph.prescan``): in a ``Blockwise`` layer each
    literal argument appears once, not once per block.  Only a shortcut:
    any doubt (another optimizer, a plain dict, a layer type not known
    there, an error) answers False and the pass walks as usual.
    """
    if not isinstance(dsk, HighLevelGraph) or logger.isEnabledFor(logging.DEBUG):
        return False  # at DEBUG the pass names the notable values it leaves inline: it must see them
    try:
        from dedupgraph.prescan import _known_optimizer, layers_hold_nothing_large

        return _known_optimizer(base) and layers_hold_nothing_large(dsk, settings)
    except Exception:
        logger.debug("dedupgraph: reading the layers failed; the pass walks the graph", exc_info=True)
        return False


def _warn_unsupported() -> None:
    # a warning from one line shows once per process under Python's default filters
    warnings.warn(
        f"dedupgraph is switched off: dask {dask.__version__} lacks "
        f"{', '.join(MISSING_INTERNALS)}, which the pass is built on. Graphs run "
        "unchanged. Install a dask release that pyproject.toml of dedupgraph supports.",
        RuntimeWarning,
        stacklevel=3,
    )


def _array_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    from dask.array.optimization import optimize

    return optimize(dsk, keys, **kwargs)


def _delayed_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    from dask.delayed import optimize

    return optimize(dsk, keys, **kwargs)


def _bag_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    from dask.bag.core import optimize

    return optimize(dsk, keys, **kwargs)


# module-level functions as bases, so these pickle by reference and import lazily
dedup = Deduplicator(base=_array_optimize)
dedup_delayed = Deduplicator(base=_delayed_optimize)
dedup_bag = Deduplicator(base=_bag_optimize)
