"""The scheduler route's preload, by the name the docs give it: ``dask scheduler --preload dedupgraph.scheduler``.

The route itself lives in :mod:`dedupgraph.routes.distributed`.
"""

from dedupgraph.routes.distributed.plugin import dask_setup, dask_teardown

__all__ = ["dask_setup", "dask_teardown"]
