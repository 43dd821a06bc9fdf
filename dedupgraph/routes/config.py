"""The config route: a dask optimizer that runs dask's own, then the pass.

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

import logging
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import dask
from dask.highlevelgraph import HighLevelGraph

from dedupgraph.compat import MISSING_INTERNALS
from dedupgraph.core.optimizers import array_optimize, bag_optimize, delayed_optimize, is_array_optimizer, is_dask_optimizer
from dedupgraph.core.pipeline import announce, deduplicate_graph
from dedupgraph.placement import in_graph
from dedupgraph.settings import Settings, warn_invalid

if TYPE_CHECKING:  # the pass's modules import dask internals: lazily, for dedupgraph.compat's check
    from dedupgraph.core.fingerprint import FingerprintMemo

Optimizer = Callable[..., Mapping[Hashable, Any]]

logger = logging.getLogger("dedupgraph")


class Deduplicator:
    """A dask optimizer: runs ``base``, then hoists repeated large objects into shared keys.

    >>> import dask
    >>> from dask.array.optimization import optimize
    >>> opt = Deduplicator(base=optimize, min_bytes="1 MiB")
    >>> opt
    Deduplicator(base=optimize, min_bytes=1048576, min_count=2, dry_run=False, exclude=(), hint_bytes=10485760, merge_equal='immutable', share='process', share_min_bytes=1048576, share_limit=0.5, check_mutation=False, floor_bytes=4096, reuse_limit=0.1)
    >>> with dask.config.set(array_optimize=opt):
    ...     pass

    Without explicit settings it reads ``dask.config["dedupgraph"]`` when it runs,
    and when pickled (as distributed does, to run it on the scheduler) it carries
    the settings in force in the pickling process with it.  If those are
    invalid (a ``dask.config.set`` after ``enable()``), it warns once per
    setting and the graph is optimized as plain dask would: the pass never
    fails a computation.  When pickled then, it travels as its ``base`` alone.
    """

    def __init__(self, base: Optimizer | None = None, **settings: Any) -> None:
        if base is not None and not callable(base):
            raise ValueError(f"Deduplicator argument 'base' must be callable or None, got {base!r}")
        self.base = base
        self.settings: Settings | None = Settings.from_config(**settings) if settings else None

    @classmethod
    def with_settings(cls, base: Optimizer | None, settings: Settings) -> Deduplicator:
        """A pass over ``base`` with these settings, already checked: how a pickled pass is rebuilt."""
        new = cls(base)
        new.settings = settings
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            settings = self.effective_settings()
        except ValueError as e:
            warn_invalid(e, INVALID_OUTCOME)
            return (plain_optimizer, (self.base,))
        return (Deduplicator.with_settings, (self.base, settings))

    def effective_settings(self) -> Settings:
        """The settings a call would use now."""
        return self.settings if self.settings is not None else Settings.from_config()

    def __call__(self, dsk: Mapping[Hashable, Any], keys: Any, **kwargs: Any) -> Mapping[Hashable, Any]:
        try:
            settings = self.effective_settings()
        except ValueError as e:
            warn_invalid(e, INVALID_OUTCOME)
            return self.base(dsk, keys, **kwargs) if self.base is not None else dsk
        if MISSING_INTERNALS:
            _warn_unsupported()
            return self.base(dsk, keys, **kwargs) if self.base is not None else dsk
        from dedupgraph.core.fingerprint import FingerprintMemo
        from dedupgraph.core.layer_hoisting import optimized_with_layer_hoists

        memo = FingerprintMemo.for_pass(settings)  # each object pickled once
        try:
            hoisted = (
                optimized_with_layer_hoists(self.base, dsk, keys, kwargs, settings, memo)
                if self.base is not None and is_array_optimizer(self.base)
                else None
            )
        except Exception:
            logger.warning("dedupgraph: hoisting in the layers failed; the pass walks the graph", exc_info=True)
            hoisted = None
        if hoisted is not None:
            out, plan = hoisted
            announce(plan, settings)
            return out
        if _nothing_large_before(self.base, dsk, settings, memo):
            # the layers hold nothing the pass could hoist, and dask's own optimizers
            # make no new large values: no walk over the optimized tasks
            return self.base(dsk, keys, **kwargs) if self.base is not None else dsk
        if self.base is not None:
            dsk = self.base(dsk, keys, **kwargs)
        try:
            return deduplicate_graph(dsk, settings, place=in_graph(settings), memo=memo)
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


#: what happens to graphs while a setting is invalid, as the warning says
INVALID_OUTCOME = "dedupgraph leaves every graph as plain dask makes it until the setting is fixed (warned once)"


def plain_optimizer(base: Optimizer | None) -> Optimizer:
    """What a pass unpickles as when its settings were invalid: its base, or no optimization at all.

    >>> plain_optimizer(None)({"a": 1}, ["a"])
    {'a': 1}
    """
    return base if base is not None else _unchanged


def _unchanged(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return dsk


def without_pass(optimizer: Any) -> Any:
    """The optimizer a pass of this route wraps, or ``optimizer`` itself if it is not one.

    >>> without_pass(dedup) is array_optimize, without_pass(print) is print
    (True, True)
    """
    return optimizer.base if isinstance(optimizer, Deduplicator) else optimizer


def _nothing_large_before(base: Optimizer | None, dsk: Mapping[Hashable, Any], settings: Settings, memo: FingerprintMemo) -> bool:
    """Whether ``dsk``'s layers, before ``base`` (one of dask's own optimizers) runs, show nothing to hoist.

    Reading the layers of a ``HighLevelGraph`` is cheaper than walking the
    optimized tasks (``dedupgraph.core.prescan``): in a ``Blockwise`` layer
    each literal argument appears once, not once per block.  Only a shortcut:
    any doubt (another optimizer, a plain dict, a layer type not known
    there, an error) answers False and the pass walks as usual.
    """
    if not isinstance(dsk, HighLevelGraph) or logger.isEnabledFor(logging.DEBUG) or settings.dry_run:
        return False  # at DEBUG and in a dry run the pass names the values it leaves inline: it must see them
    try:
        from dedupgraph.core.prescan import layers_hold_nothing_large

        return is_dask_optimizer(base) and layers_hold_nothing_large(dsk, settings, memo)
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


# module-level functions as bases, so these pickle by reference and import dask's lazily
dedup = Deduplicator(base=array_optimize)
dedup_delayed = Deduplicator(base=delayed_optimize)
dedup_bag = Deduplicator(base=bag_optimize)
