"""DataFrames rebuilt from a deduplicated graph without one alias task per partition.

>>> df2 = renamed_frame(layer, meta, divisions, keys, "frame_fn", token)  # doctest: +SKIP

``dask.dataframe.from_graph`` names its collection after a token of its
operands, so its keys cannot be those of the graph it is given: it adds an
``Alias(new, old)`` task for every partition.  Each is a task the scheduler
and the workers handle, half again as many tasks for a persisted frame
(docs/benchmarks.rst, "Measurements behind the code").  :func:`renamed_frame` instead
gives the output tasks the new keys (``GraphNode.substitute``) and builds a
:class:`RenamedGraph`, a ``FromGraph`` that takes its name as an operand.

The expression class is dedupgraph's, so only a scheduler that can import
dedupgraph can read it: ``deduplicate`` uses it where it knows that.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from dask.dataframe.dask_expr._collection import new_collection
from dask.dataframe.dask_expr.io.io import FromGraph
from dask.tokenize import tokenize


class RenamedGraph(FromGraph):
    """A ``FromGraph`` whose layer already holds its output keys: no aliases."""

    _parameters = [*FromGraph._parameters, "name"]

    @property
    def _name(self) -> str:
        return self.operand("name")

    def _layer(self) -> dict[Hashable, Any]:
        return dict(self.operand("layer"))


def renamed_frame(
    layer: Mapping[Hashable, Any],
    meta: Any,
    divisions: Sequence[Any],
    keys: Sequence[tuple[str, int]],
    prefix: str,
    token: Any,
    wrap: Any = dict,
) -> Any:
    """A DataFrame or Series over ``layer``, whose outputs ``keys`` are renamed to its own keys.

    ``token`` makes the name (``prefix-<hash>``); ``wrap(layer)`` builds the
    layer operand (``HoldingLayer`` holds futures).
    """
    name = f"{prefix}-{tokenize(token, keys)}"
    renames = {old: (name, index) for index, old in enumerate(keys)}
    renamed = {}
    for key, node in layer.items():
        new_key = renames.get(key, key)
        if new_key != key or not renames.keys().isdisjoint(node.dependencies):
            node = node.substitute(renames, key=new_key)
        renamed[new_key] = node
    return new_collection(
        RenamedGraph(wrap(renamed), meta, divisions, list(renames.values()), prefix, name)
    )
