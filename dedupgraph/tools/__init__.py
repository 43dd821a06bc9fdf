"""The tools: what sits on top of the pass and changes no graph.

>>> import dedupgraph
>>> dedupgraph.inspect([])  # doctest: +SKIP

``report`` (``dedupgraph.inspect``), ``hint`` (logged while the pass is
off), ``cli`` (the ``dedupgraph`` command), ``script`` (``dedupgraph inspect
script.py``), ``status`` (``dedupgraph info``) and ``testing`` (the pytest
plugin). Tools may import the pass, placement and the routes; nothing below
them imports a tool, except the scheduler plugin, which gives a scheduler
the hint where the route cannot run. The benchmarks ship as
:mod:`dedupgraph.benchmarks` (``benchmarks/`` in the repository).
"""
