"""The routes: every way the pass reaches a graph.

>>> import dedupgraph
>>> dedupgraph.enable()  # doctest: +SKIP

Config keys (``config``, ``activation``), the client and scheduler preloads
(``client_preload``, ``scheduler``, ``scheduler_route``), ``deduplicate``
and scattering, and shared memory (``host_share``).  Routes import the pass
(:mod:`dedupgraph.core`), never the reverse.
"""
