"""The client preload, by the name the docs give it: ``distributed.client.preload: [dedupgraph.preload]``.

It lives in :mod:`dedupgraph.routes.client_preload`.
"""

from dedupgraph.routes.client_preload import dask_setup

__all__ = ["dask_setup"]
