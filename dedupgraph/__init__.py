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

from dedupgraph.tools import hint  # noqa: E402

# the once-per-process hint on local schedulers while the pass is off (see
# dedupgraph.tools.hint): an observer, not configuration
hint.watch_local_schedulers()

from dedupgraph.routes.activation import disable, enable  # noqa: E402
from dedupgraph.routes.deduplicate import deduplicate  # noqa: E402
from dedupgraph.routes.distributed.client import forget  # noqa: E402
from dedupgraph.core.inline import keep_inline  # noqa: E402
from dedupgraph.routes.config import Deduplicator, dedup, dedup_bag, dedup_delayed  # noqa: E402
from dedupgraph.tools.report import Report, inspect  # noqa: E402
from dedupgraph.settings import Settings  # noqa: E402
from dedupgraph.version import __version__  # noqa: E402


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
    "forget",
    "inspect",
    "keep_inline",
]

# DASK_DEDUPGRAPH__ENABLED: the startup hook enables the pass once dask is
# imported; when a program imports dedupgraph first, that happens above, while
# this package is only half imported, so the hook leaves it to this line.
if "dedupgraph_startup" in sys.modules and sys.modules["dedupgraph_startup"].requested():
    sys.modules["dedupgraph_startup"].activate()
