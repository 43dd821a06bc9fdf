"""The tools: what sits on top of the pass and changes no graph.

>>> import dedupgraph
>>> dedupgraph.inspect([])  # doctest: +SKIP

``report`` (``dedupgraph.inspect``), ``hint`` (logged while the pass is
off), ``cli`` (the ``dedupgraph`` command), ``script`` (``dedupgraph inspect
script.py``), ``status`` (``dedupgraph info``), ``testing`` (the pytest
plugin), and for operators ``observe`` (what a scheduler's route holds and
did), ``metrics`` (on ``/metrics``) and ``dashboard`` (the ``/dedupgraph``
page). Tools may import the pass, placement and the routes; nothing below
them imports a tool, except the scheduler plugin, which gives a scheduler
the hint where the route cannot run. The scheduler preload
``dedupgraph.scheduler`` sets up the page and the metrics after the route.
The benchmarks ship as :mod:`dedupgraph.benchmarks` (``benchmarks/`` in the
repository).
"""
