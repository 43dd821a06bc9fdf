"""Objects and helpers shared by the tests: large things users pass to every task."""

from __future__ import annotations

import pickle
from collections.abc import Hashable
from typing import Any

import cloudpickle
import dask
from dask.base import collections_to_expr
import pandas as pd

from dedupgraph.optimizer import task_graph

SERIES_ROWS = 30_000  # ~241 KB pickled, as in the seed scenario


class Mapper:
    """The seed scenario's object: small by ``sizeof``, large when pickled."""

    def __init__(self, rows: int = SERIES_ROWS) -> None:
        self.s = pd.Series(range(rows))

    def __call__(self, block: Any) -> Any:
        return block + len(self.s)

    def method(self, block: Any) -> Any:
        return block + int(self.s.iloc[-1])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapper) and self.s.equals(other.s)

    __hash__ = object.__hash__


def uses_mapper(block: Any, mapper: Mapper, offset: int = 0) -> Any:
    return block + len(mapper.s) + offset


def uses_kw(x: Any, *, mapper: Mapper) -> Any:
    return x + len(mapper.s)


def sum_sizes(*items: Any) -> int:
    """Sum of len(s) for Mappers, values for numbers, through nested containers."""
    total = 0
    for item in items:
        if isinstance(item, Mapper):
            total += len(item.s)
        elif isinstance(item, dict):
            total += sum_sizes(*item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += sum_sizes(*item)
        elif isinstance(item, (int, float)):
            total += item
    return total


class Unpicklable:
    """Large-ish, but pickling fails the usual way."""

    def __init__(self) -> None:
        self.payload = bytes(200_000)

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("no pickling for you")


class ExplodingPickle:
    """Pickling raises something unusual."""

    def __init__(self) -> None:
        self.payload = bytes(200_000)

    def __reduce__(self) -> Any:
        raise ZeroDivisionError("reduce exploded")


def optimized_graph(*collections: Any) -> dict[Hashable, Any]:
    """The graph dask would run for ``collections``, with the optimizers in force now."""
    flat = [c for item in collections for c in (item if isinstance(item, list) else [item])]
    # as dask.compute does: one expression, so one optimizer call per collection type
    expr = collections_to_expr(flat).optimize()
    return task_graph(expr.__dask_graph__())


def payload(graph: dict[Hashable, Any]) -> tuple[int, int]:
    """(bytes of the tasks, bytes of the hoisted ``dedup-`` keys), each task pickled on its own.

    Each task pickled separately is what distributed sends to workers.
    """
    tasks = hoisted = 0
    for key, node in graph.items():
        size = len(cloudpickle.dumps(node))
        if str(key).startswith("dedup-"):
            hoisted += size
        else:
            tasks += size
    return tasks, hoisted


def hoisted_keys(graph: dict[Hashable, Any]) -> list[str]:
    return sorted(k for k in graph if isinstance(k, str) and k.startswith("dedup-"))
