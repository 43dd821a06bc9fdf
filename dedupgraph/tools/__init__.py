"""The tools around the pass: report, hint, CLI, script runner and pytest plugin.

>>> import dedupgraph
>>> dedupgraph.inspect([])  # doctest: +SKIP

The benchmarks ship as :mod:`dedupgraph.benchmarks` (``benchmarks/`` in the repository).
"""
