"""The pass: pure graph-to-graph code, stage by stage.

>>> from dedupgraph.core.pipeline import deduplicate_graph  # fingerprint, candidates, plan, rewrite

Nothing here knows of clients, schedulers or config keys: the routes
(:mod:`dedupgraph.routes`) call it with a graph and a ``Settings``.
"""
