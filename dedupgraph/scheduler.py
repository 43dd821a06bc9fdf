"""The scheduler route's preload, by the name the docs give it: ``dask scheduler --preload dedupgraph.scheduler``.

The route itself lives in :mod:`dedupgraph.routes.distributed`; what
operators see of it (the ``/dedupgraph`` page, dedupgraph's metrics on
``/metrics``) in :mod:`dedupgraph.tools.dashboard` and
:mod:`dedupgraph.tools.metrics`, which this preload adds once the route is on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dedupgraph.routes.distributed.plugin import dask_teardown, install

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["dask_setup", "dask_teardown"]

logger = logging.getLogger("dedupgraph")


def dask_setup(scheduler: Scheduler) -> None:
    """Run by distributed when this module is a scheduler preload: the route, then the page and the metrics.

    Where the route stays off (it says why, once) the scheduler gets the
    hint instead, and neither the page nor the metrics: they would only
    ever show nothing.  ``dedupgraph status`` and ``dedupgraph info
    --scheduler`` tell why.
    """
    if install(scheduler):
        for_operators(scheduler)


def for_operators(scheduler: Scheduler) -> None:
    """The ``/dedupgraph`` page and dedupgraph's metrics for ``scheduler``; never raises (the scheduler must start)."""
    try:
        from dedupgraph.tools import dashboard, metrics

        dashboard.mount(scheduler)
        metrics.watch_scheduler(scheduler)
    except Exception:  # noqa: BLE001  (reported: observing must never stop a scheduler)
        logger.warning("dedupgraph: the /dedupgraph page or the metrics could not be set up", exc_info=True)
