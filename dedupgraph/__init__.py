"""dedupgraph: stop dask from copying the same large object into every task.

>>> import dask, dedupgraph
>>> dask.config.set(array_optimize=dedupgraph.dedup)  # doctest: +SKIP
>>> dedupgraph.enable()                               # doctest: +SKIP

See README.md for what is hoisted, the settings and the caveats.
"""

from __future__ import annotations

from dedupgraph.settings import register_defaults

register_defaults()

from dedupgraph.activation import disable, enable  # noqa: E402
from dedupgraph.deduplicate import deduplicate  # noqa: E402
from dedupgraph.inline import keep_inline  # noqa: E402
from dedupgraph.optimizer import Deduplicator, dedup, dedup_bag, dedup_delayed  # noqa: E402
from dedupgraph.settings import Settings  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Deduplicator",
    "Settings",
    "dedup",
    "dedup_bag",
    "dedup_delayed",
    "deduplicate",
    "disable",
    "enable",
    "keep_inline",
]
