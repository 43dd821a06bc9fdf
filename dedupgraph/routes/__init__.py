"""The routes: every way a graph reaches the pass.

>>> import dedupgraph
>>> dedupgraph.enable()  # doctest: +SKIP

- ``config``: the pass as a dask optimizer (``array_optimize=dedupgraph.dedup``);
  ``activation``: ``enable()`` and ``disable()``, which set those keys.
- ``distributed``: the scheduler route and its client side, one subpackage.
- ``deduplicate``: ``dedupgraph.deduplicate(...)``, in this process, from the
  collections ``materialize`` turns into one graph (``frames`` rebuilds DataFrames).

Routes import the pass (:mod:`dedupgraph.core`) and placement
(:mod:`dedupgraph.placement`), never the reverse.
"""
