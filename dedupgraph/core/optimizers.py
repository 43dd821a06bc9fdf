"""Which low-level optimizers are dask's own: they build new tasks from a graph's values, never new large values.

>>> from dask.array.optimization import optimize
>>> is_dask_optimizer(optimize), is_dask_optimizer(array_optimize), is_dask_optimizer(print)
(True, True, False)
>>> is_array_optimizer(optimize), is_array_optimizer(bag_optimize)
(True, False)

The one place that decides it: the prescan and the layer hoisting trust
such an optimizer (culling, blockwise and linear fusion, slicing), and the
client side puts dask's own back where a scheduler cannot import dedupgraph.
``array_optimize``, ``delayed_optimize`` and ``bag_optimize`` call dask's,
imported when first called: the config route's passes wrap them, and a
graph carries them by reference.
"""

from __future__ import annotations

import importlib
from typing import Any

#: dask's own low-level optimizer of each collection, as (module, name)
DASK_OPTIMIZERS = {
    "array": ("dask.array.optimization", "optimize"),
    "delayed": ("dask.delayed", "optimize"),
    "bag": ("dask.bag.core", "optimize"),
}


def dask_optimizer(collection: str) -> Any:
    """Dask's own optimizer for ``collection`` (``"array"``, ``"delayed"`` or ``"bag"``).

    >>> dask_optimizer("bag").__module__
    'dask.bag.core'
    """
    module, name = DASK_OPTIMIZERS[collection]
    return getattr(importlib.import_module(module), name)


def array_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return dask_optimizer("array")(dsk, keys, **kwargs)


def delayed_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return dask_optimizer("delayed")(dsk, keys, **kwargs)


def bag_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return dask_optimizer("bag")(dsk, keys, **kwargs)


CALLING_DASKS = (array_optimize, delayed_optimize, bag_optimize)


def qualified_name(optimizer: Any) -> tuple[str, str]:
    """``(module, name)`` of a function, as ``DASK_OPTIMIZERS`` lists them (a wrapper's: the wrapped one's)."""
    return getattr(optimizer, "__module__", ""), getattr(optimizer, "__name__", "")


def is_dask_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is none, one of dask's own low-level optimizers, or one of the functions here that call them."""
    if optimizer is None or optimizer in CALLING_DASKS:
        return True
    return qualified_name(optimizer) in DASK_OPTIMIZERS.values()


def is_array_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is dask's array optimizer, or :func:`array_optimize`, which calls it."""
    return optimizer is array_optimize or qualified_name(optimizer) == DASK_OPTIMIZERS["array"]
