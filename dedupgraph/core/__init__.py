"""The pass: pure graph-to-graph code, stage by stage.

>>> from dedupgraph.core.pipeline import deduplicate_graph  # fingerprint, candidates, plan, rewrite

Nothing here knows of clients, schedulers or config keys: the routes
(:mod:`dedupgraph.routes`) call it with a graph and a ``Settings``, and
placement (:mod:`dedupgraph.placement`) tells it where a hoisted object
lives. It imports ``dedupgraph.settings``, ``dedupgraph.compat`` and
``dedupgraph.once``, and nothing of the routes, placement or the tools.
``layer_hoisting`` hoists in ``Blockwise`` layers before dask's array
optimizer runs, for both routes; ``optimizers`` is the one place that
decides which optimizers are dask's own.
"""
