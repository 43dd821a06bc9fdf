"""Client preload: every new Client switches the pass on, if its scheduler can import dedupgraph.

>>> # DASK_DISTRIBUTED__CLIENT__PRELOAD='["dedupgraph.preload"]' python analysis.py

On distributed the scheduler unpickles the pass with each graph, so a
scheduler without dedupgraph would fail every computation ("Error during
deserialization of the task graph").  :func:`dask_setup` therefore asks the
scheduler to import dedupgraph first; if it cannot, it warns once with the
fix and leaves the pass off in this process.
"""

from __future__ import annotations

import importlib
import threading
import warnings
import weakref
from typing import TYPE_CHECKING

import dask.config

import dedupgraph
from dedupgraph.activation import OPTIMIZER_KEYS, enable
from dedupgraph.optimizer import Deduplicator

if TYPE_CHECKING:
    from distributed import Client

# Warn once per process: a notebook that creates a Client per cell must not
# repeat the same paragraph.  A flag under a lock, never growing.
_warned = False
_warned_lock = threading.Lock()

# client -> whether its scheduler imports dedupgraph; weak, so it holds no
# client alive and holds at most the clients that exist.
_checked: weakref.WeakKeyDictionary[Client, bool] = weakref.WeakKeyDictionary()


async def dask_setup(client: Client) -> None:
    """Run by distributed for every new Client when this module is a client preload."""
    problem = await scheduler_problem(client)
    _checked[client] = problem is None
    if problem is None:
        enable()
        return
    switch_off()
    warn_once(problem)


# dask's own optimizer for each key, as "module:attribute"
_DASK_OPTIMIZERS = {
    "array_optimize": "dask.array.optimization:optimize",
    "delayed_optimize": "dask.delayed:optimize",
    "bag_optimize": "dask.bag.core:optimize",
}


def switch_off() -> None:
    """Like ``dedupgraph.disable()``, but with nothing of dedupgraph left in the config.

    ``disable()`` puts back the bases the passes wrap, which are dedupgraph
    functions too: a scheduler that cannot import dedupgraph could not
    unpickle a graph that carries them.  Here each key gets dask's own
    optimizer instead.
    """
    restored = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, None)
        if isinstance(current, Deduplicator) or getattr(current, "__module__", "").startswith("dedupgraph"):
            module, name = _DASK_OPTIMIZERS[key].split(":")
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
    from distributed.protocol.pickle import dumps

    try:
        # unpickling the probe, by reference, imports dedupgraph on the scheduler
        response = await client.scheduler.run_function(
            function=dumps(_probe), args=dumps(()), kwargs=dumps({}), wait=True
        )
    except Exception as e:  # the unpickling error comes back raised
        return _fix(client, f"{type(e).__name__}: {e}")
    if response.get("status") != "OK":
        return _fix(client, repr(response.get("exception", response)))
    version = response.get("result")
    if version != dedupgraph.__version__:
        warnings.warn(
            f"dedupgraph {dedupgraph.__version__} here, {version} on the scheduler "
            f"{client.scheduler.address}: install the same version everywhere",
            RuntimeWarning,
            stacklevel=2,
        )
    return None


def _probe() -> str:
    return dedupgraph.__version__


def _fix(client: Client, error: str) -> str:
    return (
        f"dedupgraph: the scheduler at {client.scheduler.address} cannot import "
        f"dedupgraph ({error}), so the pass stays off in this process: the "
        "scheduler unpickles the pass with every graph, and would fail every "
        f"computation. Fix: install dedupgraph {dedupgraph.__version__} in the "
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
