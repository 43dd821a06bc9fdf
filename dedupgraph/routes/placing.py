"""Where the routes put a hoisted object: what ``share`` asks for, as the pass's ``place``.

>>> from dedupgraph.settings import Settings
>>> placement_for(Settings()) is None  # share="process": plain data under the hoisted key
True
>>> placement_for(Settings(share="host")) is not None  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dedupgraph.settings import Settings

if TYPE_CHECKING:  # the stages import dask internals that a dask may lack (see dedupgraph.compat)
    from dedupgraph.core.rewrite import Place


def placement_for(settings: Settings) -> Place | None:
    """``place`` for :func:`dedupgraph.core.pipeline.deduplicate_graph` under ``settings``."""
    if settings.share != "host":
        return None
    # imported only here: shared-memory code (and its serializers) load when first asked for
    from dedupgraph.routes.host_share import placement

    return placement(settings)
