"""Dask's array optimizer run on layers whose broadcast arguments are hoisted: the config and scheduler routes share it.

>>> import dask.array as da, pandas as pd
>>> from dask.array.optimization import optimize
>>> from dedupgraph.core.fingerprint import FingerprintMemo
>>> from dedupgraph.settings import Settings
>>> x = da.ones((8, 4), chunks=(1, 4)).map_blocks(lambda b, t: b + len(t), pd.Series(range(50_000)))
>>> settings = Settings()
>>> graph, plan = optimized_with_layer_hoists(optimize, x.__dask_graph__(), x.__dask_keys__(), {}, settings, FingerprintMemo.for_pass(settings))
>>> [len(hoist.tasks) for hoist in plan.hoists.values()]
[8]

Cheaper than the pass after optimizing, which rebuilds one task per
block (``dedupgraph.core.blockwise_hoist``), and the same keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from dedupgraph.routes.placing import placement_for
from dedupgraph.settings import Settings

if TYPE_CHECKING:  # the pass's modules import dask internals: lazily, for dedupgraph.compat's check
    from dedupgraph.core.fingerprint import FingerprintMemo
    from dedupgraph.core.plan import Plan

logger = logging.getLogger("dedupgraph")

Optimizer = Callable[..., Mapping[Hashable, Any]]


def optimized_with_layer_hoists(
    base: Optimizer,
    dsk: Mapping[Hashable, Any],
    keys: Any,
    kwargs: dict[str, Any],
    settings: Settings,
    memo: FingerprintMemo,
) -> tuple[Mapping[Hashable, Any], Plan] | None:
    """``base``'s output for ``dsk`` with its blockwise broadcast arguments hoisted first, and the plan; or None.

    None, and ``base`` not run, unless all of the pass's work can be done
    in the layers. ``base`` must be dask's own array optimizer, whose fusion
    ``dedupgraph.core.blockwise_hoist`` knows (the caller tells). Not for dry
    runs, other placements (``share="host"``) or DEBUG logs (which name what
    the pass leaves inline): the pass does those.
    """
    if settings.dry_run or logger.isEnabledFor(logging.DEBUG) or placement_for(settings) is not None:
        return None
    from dedupgraph.core.blockwise_hoist import fused_as_plain, hoisted_in_layers

    hoisted = hoisted_in_layers(dsk, keys, settings, memo)
    if hoisted is None:
        return None
    try:
        out = base(hoisted.graph, keys, **kwargs)
    except Exception:
        logger.debug("dedupgraph: dask's optimizer failed on the hoisted layers; the pass walks the graph", exc_info=True)
        return None
    if not fused_as_plain(out, hoisted.plan, settings.min_count):
        return None  # culled below min-count, or fused otherwise: the pass on plain dask's output decides
    return out, hoisted.plan

