"""dedupgraph: stop dask from copying the same large object into every task.

>>> import dask, dedupgraph
>>> dask.config.set(array_optimize=dedupgraph.dedup)  # doctest: +SKIP
>>> dedupgraph.enable()                               # doctest: +SKIP

See README.md for what is hoisted, the settings and the caveats.
"""

from __future__ import annotations

import sys

from dedupgraph.settings import register_defaults

register_defaults()

from dedupgraph import hint  # noqa: E402

hint.install()  # the once-per-process hint while the pass is off (see dedupgraph.hint)

from dedupgraph.activation import disable, enable  # noqa: E402
from dedupgraph.deduplicate import deduplicate  # noqa: E402
from dedupgraph.inline import keep_inline  # noqa: E402
from dedupgraph.optimizer import Deduplicator, dedup, dedup_bag, dedup_delayed  # noqa: E402
from dedupgraph.report import Report, inspect  # noqa: E402
from dedupgraph.settings import Settings  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Deduplicator",
    "Report",
    "Settings",
    "dedup",
    "dedup_bag",
    "dedup_delayed",
    "deduplicate",
    "disable",
    "enable",
    "inspect",
    "keep_inline",
]

# DASK_DEDUPGRAPH__ENABLED: the startup hook enables the pass once dask is
# imported; when a program imports dedupgraph first, that happens above, while
# this package is only half imported, so the hook leaves it to this line.
if "dedupgraph_startup" in sys.modules and sys.modules["dedupgraph_startup"].requested():
    sys.modules["dedupgraph_startup"].activate()
