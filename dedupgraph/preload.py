"""The client preload, by the name the docs give it: ``distributed.client.preload: [dedupgraph.preload]``.

It lives in :mod:`dedupgraph.routes.distributed.client`.
"""

from dedupgraph.routes.distributed.client import dask_setup

__all__ = ["dask_setup"]
