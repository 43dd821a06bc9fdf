"""The installed dedupgraph's version, which clients and schedulers compare.

>>> from dedupgraph.version import __version__
>>> __version__.count(".")
2
"""

__version__ = "0.2.0"
