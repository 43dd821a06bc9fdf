"""Switch the pass on and off for arrays, delayed and bags.

>>> import dedupgraph
>>> with dedupgraph.enable(min_bytes="128 KiB"):
...     pass  # computations here are deduplicated
>>> dedupgraph.enable()     # doctest: +SKIP
>>> dedupgraph.disable()    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import dask.config

from dedupgraph.routes.config import Deduplicator, dedup, dedup_bag, dedup_delayed
from dedupgraph.settings import Settings

OPTIMIZER_KEYS = {
    "array_optimize": dedup,
    "delayed_optimize": dedup_delayed,
    "bag_optimize": dedup_bag,
}
# The preload modules, by the names the docs give them, and the config keys that list preloads
SCHEDULER_PRELOAD = "dedupgraph.scheduler"  #: the scheduler route (dedupgraph.routes.distributed.plugin)
CLIENT_PRELOAD = "dedupgraph.preload"  #: the client side (dedupgraph.routes.distributed.client)
SCHEDULER_PRELOADS_KEY = "distributed.scheduler.preload"
CLIENT_PRELOADS_KEY = "distributed.client.preload"


def enable(**settings: Any) -> dask.config.set:
    """Deduplicate every array, delayed and bag computation; returns a ``dask.config.set``.

    >>> with enable(min_count=3):
    ...     dask.config.get("dedupgraph.min-count")
    3

    Called plainly, the change stays; used as a context manager, the previous
    configuration comes back on exit.  ``settings`` (``min_bytes``,
    ``min_count``) are validated now and written to ``dask.config``, so on
    distributed they travel with the graph to the scheduler.  A
    ``LocalCluster`` started afterwards in this process runs the scheduler
    route too (``dedupgraph.scheduler`` becomes a scheduler preload), which
    covers DataFrames and array-expr arrays.
    """
    chosen = Settings.from_config(**settings)
    written = {f"dedupgraph.{name.replace('_', '-')}" for name in settings}
    config = {k: v for k, v in chosen.as_config().items() if k in written}
    preloads = with_preload(dask.config.get(SCHEDULER_PRELOADS_KEY, None), SCHEDULER_PRELOAD)
    return dask.config.set({**OPTIMIZER_KEYS, **config, SCHEDULER_PRELOADS_KEY: preloads})


def disable() -> dask.config.set:
    """Put back the optimizer each dedupgraph pass wraps; returns a ``dask.config.set``.

    >>> with enable(), disable():
    ...     dask.config.get("array_optimize").__name__
    'array_optimize'

    The key is set to the wrapped base rather than to ``None``: for arrays and
    bags a falsy value means "do not optimize at all".  Schedulers started
    afterwards in this process no longer get the scheduler route (running
    ones keep it).
    """
    restored: dict[str, Any] = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, default=None)
        if isinstance(current, Deduplicator):
            restored[key] = current.base
    preloads = preload_list(dask.config.get(SCHEDULER_PRELOADS_KEY, None))
    if SCHEDULER_PRELOAD in preloads:
        restored[SCHEDULER_PRELOADS_KEY] = [p for p in preloads if p != SCHEDULER_PRELOAD]
    return dask.config.set(restored)


def preload_list(value: Any) -> list[str]:
    """A preload config value (None, one name, or a list) as a list.

    >>> preload_list(None), preload_list("a"), preload_list(("a", "b"))
    ([], ['a'], ['a', 'b'])
    """
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def with_preload(value: Any, name: str) -> list[str]:
    """The preload list ``value`` with ``name`` in it (at the end, if it was missing).

    >>> with_preload(["x"], "dedupgraph.scheduler"), with_preload("dedupgraph.scheduler", "dedupgraph.scheduler")
    (['x', 'dedupgraph.scheduler'], ['dedupgraph.scheduler'])
    """
    preloads = preload_list(value)
    return preloads if name in preloads else [*preloads, name]
