"""Switch the pass on and off for arrays, delayed and bags.

>>> import dedupgraph
>>> with dedupgraph.enable(min_bytes="128 KiB"):
...     pass  # computations here are deduplicated
>>> dedupgraph.enable()     # doctest: +SKIP
>>> dedupgraph.disable()    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.config

from dedupgraph.optimizer import Deduplicator, dedup, dedup_bag, dedup_delayed
from dedupgraph.settings import Settings

OPTIMIZER_KEYS = {
    "array_optimize": dedup,
    "delayed_optimize": dedup_delayed,
    "bag_optimize": dedup_bag,
}


def enable(**settings: Any) -> dask.config.set:
    """Deduplicate every array, delayed and bag computation; returns a ``dask.config.set``.

    >>> with enable(min_count=3):
    ...     dask.config.get("dedupgraph.min-count")
    3

    Called plainly, the change stays; used as a context manager, the previous
    configuration comes back on exit.  ``settings`` (``min_bytes``,
    ``min_count``) are validated now and written to ``dask.config``, so on
    distributed they travel with the graph to the scheduler.
    """
    chosen = Settings.from_config(**settings)
    written = {f"dedupgraph.{name.replace('_', '-')}" for name in settings}
    config = {k: v for k, v in chosen.as_config().items() if k in written}
    return dask.config.set({**OPTIMIZER_KEYS, **config})


def disable() -> dask.config.set:
    """Put back the optimizer each dedupgraph pass wraps; returns a ``dask.config.set``.

    >>> with enable(), disable():
    ...     dask.config.get("array_optimize").__name__
    '_array_optimize'

    The key is set to the wrapped base rather than to ``None``: for arrays and
    bags a falsy value means "do not optimize at all".
    """
    restored = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, default=None)
        if isinstance(current, Deduplicator):
            restored[key] = current.base
    return dask.config.set(restored)


@dataclass(frozen=True)
class Status:
    """Where the pass is on in this process, and what switched it on.

    >>> with enable():
    ...     status()
    Status(on=('array', 'delayed', 'bag'), routes=('config',), preload=False, environment_failed=False)
    """

    on: tuple[str, ...]  #: collections whose optimizer is a dedupgraph pass
    routes: tuple[str, ...]  #: "environment", "config"
    preload: bool  #: whether ``dedupgraph.preload`` is a client preload (switches it on at each Client)
    environment_failed: bool  #: DASK_DEDUPGRAPH__ENABLED is true, yet the pass is off


def status() -> Status:
    """The activation of the pass in this process, for ``dedupgraph info``."""
    from dedupgraph_startup import requested

    on = tuple(
        key.removesuffix("_optimize")
        for key in OPTIMIZER_KEYS
        if isinstance(dask.config.get(key, None), Deduplicator)
    )
    from_environment = requested()
    preloads = dask.config.get("distributed.client.preload", None) or []
    preload = "dedupgraph.preload" in ([preloads] if isinstance(preloads, str) else preloads)
    routes = () if not on else ("environment",) if from_environment else ("config",)
    return Status(on, routes, preload, environment_failed=from_environment and not on)
