"""The dask internals the pass is built on, and whether this dask has them.

>>> MISSING_INTERNALS
()

The pass reads and builds ``dask._task_spec`` nodes, a private module that
moves between releases.  With a dask that lacks any of these names, the pass
switches itself off with one warning instead of failing a computation.
"""

from __future__ import annotations

import importlib

REQUIRED = (
    "Alias",
    "DataNode",
    "Dict",
    "GraphNode",
    "List",
    "NestedContainer",
    "Set",
    "Task",
    "TaskRef",
    "Tuple",
    "_execute_subgraph",
    "_extra_args",
    "convert_legacy_graph",
)


def missing_internals() -> tuple[str, ...]:
    """The names of ``REQUIRED`` that this dask's ``dask._task_spec`` lacks."""
    try:
        spec = importlib.import_module("dask._task_spec")
    except ImportError:
        return ("dask._task_spec",)
    return tuple(f"dask._task_spec.{name}" for name in REQUIRED if not hasattr(spec, name))


MISSING_INTERNALS = missing_internals()
