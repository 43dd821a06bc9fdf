"""How the pass is switched on in this process, for ``dedupgraph info``.

>>> status().on  # doctest: +SKIP
('array', 'delayed', 'bag')
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.config

from dedupgraph.routes.activation import (
    CLIENT_PRELOAD,
    CLIENT_PRELOADS_KEY,
    OPTIMIZER_KEYS,
    SCHEDULER_PRELOAD,
    SCHEDULER_PRELOADS_KEY,
    preload_list,
)
from dedupgraph.routes.config import Deduplicator
from dedupgraph_startup import requested


@dataclass(frozen=True)
class Status:
    """Where the pass is on in this process, and what switched it on.

    >>> from dedupgraph.routes.activation import enable
    >>> with enable():
    ...     status()
    Status(on=('array', 'delayed', 'bag'), routes=('config',), preload=True, environment_failed=False, scheduler_route=True)
    """

    on: tuple[str, ...]  #: collections whose optimizer is a dedupgraph pass
    routes: tuple[str, ...]  #: "environment", "config"
    preload: bool  #: whether ``dedupgraph.preload`` is a client preload (switches it on at each Client)
    environment_failed: bool  #: DASK_DEDUPGRAPH__ENABLED is true, yet the pass is off
    #: whether ``dedupgraph.scheduler`` is a scheduler preload: schedulers started here run the route
    scheduler_route: bool = False


def status() -> Status:
    """The activation of the pass in this process, for ``dedupgraph info``."""
    on = tuple(
        key.removesuffix("_optimize")
        for key in OPTIMIZER_KEYS
        if isinstance(dask.config.get(key, None), Deduplicator)
    )
    from_environment = requested()
    preload = CLIENT_PRELOAD in preload_list(dask.config.get(CLIENT_PRELOADS_KEY, None))
    routes = () if not on else ("environment",) if from_environment else ("config",)
    scheduler_route = SCHEDULER_PRELOAD in preload_list(dask.config.get(SCHEDULER_PRELOADS_KEY, None))
    return Status(on, routes, preload, environment_failed=from_environment and not on, scheduler_route=scheduler_route)
