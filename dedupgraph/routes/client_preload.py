"""Client preload: every new Client switches the pass on, if its scheduler can import dedupgraph.

>>> # DASK_DISTRIBUTED__CLIENT__PRELOAD='["dedupgraph.preload"]' python analysis.py

On distributed the scheduler unpickles the pass with each graph, so a
scheduler without dedupgraph would fail every computation ("Error during
deserialization of the task graph").  :func:`dask_setup` therefore asks the
scheduler to import dedupgraph first; if it cannot, it warns once with the
fix and leaves the pass off in this process.

The same question tells whether the scheduler runs the scheduler route
(``dedupgraph.scheduler``).  If it does, each graph this client submits
carries the settings in force here (``dedupgraph.routes.courier``), which then
govern it on the scheduler, DataFrames included.  If it does not, the
scheduler gets the once-per-process hint for the graphs of every client
(``dedupgraph.tools.hint``), and this process logs one INFO line.
"""

from __future__ import annotations

import importlib
import logging
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any

import dask.config

from dedupgraph.version import __version__
from dedupgraph.routes import courier
from dedupgraph.routes.activation import OPTIMIZER_KEYS, switch_on
from dedupgraph.routes.config import INVALID_OUTCOME, Deduplicator
from dedupgraph.settings import warn_invalid

if TYPE_CHECKING:
    from distributed import Client, Scheduler

logger = logging.getLogger("dedupgraph")

# Warn once per process: a notebook that creates a Client per cell must not
# repeat the same paragraph.  A flag under a lock, never growing.
_warned = False
_warned_lock = threading.Lock()

# client -> whether its scheduler imports dedupgraph; weak, so it holds no
# client alive and holds at most the clients that exist.
_checked: weakref.WeakKeyDictionary[Client, bool] = weakref.WeakKeyDictionary()


# The INFO line about a scheduler without the route, once per process.
_told = False


async def dask_setup(client: Client) -> None:
    """Run by distributed for every new Client when this module is a client preload."""
    found = await scheduler_status(client)
    _checked[client] = not isinstance(found, str)
    if isinstance(found, str):
        switch_off()
        warn_once(found)
        return
    try:
        switch_on()  # an optimizer of the user's own stays
    except ValueError as e:  # a setting made invalid since: the Client must start all the same
        warn_invalid(e, INVALID_OUTCOME)
    if found.get("route"):
        courier.attach(client, scheduler_route_on)
    else:
        _tell_once(client)


def _tell_once(client: Client) -> None:
    global _told
    with _warned_lock:
        tell, _told = not _told, True
    if tell:
        logger.info(
            "dedupgraph: the scheduler at %s does not run the scheduler route: only arrays, delayed "
            "values and bags are deduplicated, not DataFrames. Set DASK_DEDUPGRAPH__ENABLED=True in "
            "the scheduler's environment too (or start it with --preload dedupgraph.scheduler).",
            client.scheduler.address,
        )


def switch_off() -> None:
    """Like ``dedupgraph.disable()``, but with nothing of dedupgraph left in the config.

    ``disable()`` puts back the bases the passes wrap, which are dedupgraph
    functions too: a scheduler that cannot import dedupgraph could not
    unpickle a graph that carries them.  Here each key gets dask's own
    optimizer instead.
    """
    from dedupgraph.core.prescan import DASK_OPTIMIZERS

    restored = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, None)
        if isinstance(current, Deduplicator) or getattr(current, "__module__", "").startswith("dedupgraph"):
            module, name = DASK_OPTIMIZERS[key.removesuffix("_optimize")]
            restored[key] = getattr(importlib.import_module(module), name)
    dask.config.set(restored)


def scheduler_imports_dedupgraph(client: Client) -> bool:
    """Whether ``client``'s scheduler can import dedupgraph; asked once per client."""
    known = _checked.get(client)
    if known is None:
        known = _checked[client] = client.sync(scheduler_problem, client) is None
    return known


async def scheduler_problem(client: Client) -> str | None:
    """None if the scheduler imports dedupgraph, else what goes wrong, with the fix."""
    found = await scheduler_status(client)
    return found if isinstance(found, str) else None


async def scheduler_route_on(client: Client) -> bool:
    """Whether ``client``'s scheduler runs the scheduler route."""
    found = await scheduler_status(client)
    return not isinstance(found, str) and bool(found.get("route"))


async def scheduler_status(client: Client, observe: bool = True) -> dict[str, Any] | str:
    """What the scheduler says of dedupgraph there (``dedupgraph.scheduler.status``), or the problem, with the fix.

    ``observe``: a scheduler without the route gets the hint (see ``dedupgraph.tools.hint``).
    """
    from distributed.protocol.pickle import dumps

    try:
        # unpickling the probe, by reference, imports dedupgraph on the scheduler
        response = await client.scheduler.run_function(
            function=dumps(_probe), args=dumps(()), kwargs=dumps({"observe": observe}), wait=True
        )
    except Exception as e:  # the unpickling error comes back raised
        return _fix(client, f"{type(e).__name__}: {e}")
    if response.get("status") != "OK":
        return _fix(client, repr(response.get("exception", response)))
    found = response.get("result")
    if not isinstance(found, dict):  # an older dedupgraph answers with its version
        found = {"version": found, "route": False}
    if found.get("version") != __version__:
        warnings.warn(
            f"dedupgraph {__version__} here, {found.get('version')} on the scheduler "
            f"{client.scheduler.address}: install the same version everywhere",
            RuntimeWarning,
            stacklevel=2,
        )
    return found


def _probe(dask_scheduler: Scheduler | None = None, observe: bool = True) -> dict[str, Any]:
    """Runs on the scheduler: its status; where the route is off, it gets the hint instead."""
    from dedupgraph.routes import scheduler

    if dask_scheduler is None:
        return {"version": __version__, "route": False}
    found = scheduler.status(dask_scheduler)
    if observe and not found["route"]:
        scheduler.observe(dask_scheduler)
    return found


def _fix(client: Client, error: str) -> str:
    return (
        f"dedupgraph: the scheduler at {client.scheduler.address} cannot import "
        f"dedupgraph ({error}), so the pass stays off in this process: the "
        "scheduler unpickles the pass with every graph, and would fail every "
        f"computation. Fix: install dedupgraph {__version__} in the "
        "scheduler's environment too (and the workers'), e.g. in the image the "
        "scheduler runs, or with EXTRA_PIP_PACKAGES=dedupgraph."
    )


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time in this process only."""
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(message, RuntimeWarning, stacklevel=2)
