"""Objects and helpers shared by the tests: large things users pass to every task."""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Hashable, Iterator
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import pandas as pd
from dask import delayed
from dask.base import collections_to_expr
from distributed.diagnostics.plugin import SchedulerPlugin

from dedupgraph.core.pipeline import task_graph

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


@contextlib.contextmanager
def amm_stopped(client: Any) -> Iterator[None]:
    """distributed's Active Memory Manager paused: it drops surplus copies of a key at any moment, and some tests count copies."""
    client.amm.stop()
    try:
        yield
    finally:
        client.amm.start()


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


def case_settings(case: str) -> dict[str, Any]:
    """The settings under which a case of ``CASES`` hoists its object into one key."""
    return {"merge_equal": "always"} if case == "delayed-equal-copies" else {}


# --- every position a user's object can take, each case a collection whose tasks embed ``m``

N_CHUNKS = 12


def _arr():
    return da.arange(N_CHUNKS * 2, chunks=2)


def _closure(m):
    def add_len(block):
        return block + len(m.s)

    return add_len


def _inc(x):
    return x + 1


# Each case builds a collection whose every task embeds the object ``m``.
CASES = {
    "map_blocks-arg": lambda m: _arr().map_blocks(uses_mapper, m),
    "map_blocks-kwarg": lambda m: _arr().map_blocks(uses_mapper, mapper=m, offset=1),
    "bound-method-fused": lambda m: (_arr().map_blocks(m.method) + 1).sum(),
    "callable-instance": lambda m: _arr().map_blocks(m),
    "partial": lambda m: _arr().map_blocks(functools.partial(uses_mapper, mapper=m)),
    "closure": lambda m: _arr().map_blocks(_closure(m)),
    "delayed-arg": lambda m: [delayed(uses_mapper)(i, m) for i in range(N_CHUNKS)],
    "delayed-kwarg": lambda m: [delayed(uses_kw)(i, mapper=m) for i in range(N_CHUNKS)],
    "delayed-method": lambda m: [delayed(m.method)(i) for i in range(N_CHUNKS)],
    "delayed-plain-list": lambda m: [delayed(sum_sizes)([m, i]) for i in range(N_CHUNKS)],
    "delayed-plain-dict": lambda m: [delayed(sum_sizes)({"m": m, "i": i}) for i in range(N_CHUNKS)],
    "delayed-List-task": lambda m: [
        delayed(sum_sizes)([delayed(_inc)(i), m]) for i in range(N_CHUNKS)
    ],
    "delayed-Dict-task": lambda m: [
        delayed(sum_sizes)({"x": delayed(_inc)(i), "m": m}) for i in range(N_CHUNKS)
    ],
    "delayed-Tuple-task": lambda m: [
        delayed(sum_sizes)((delayed(_inc)(i), (m, 2))) for i in range(N_CHUNKS)
    ],
    "delayed-Set-task": lambda m: [
        delayed(sum_sizes)({delayed(_inc)(i), m}) for i in range(N_CHUNKS)
    ],
    # equal but distinct (mutable) objects share a key only with merge-equal: always
    "delayed-equal-copies": lambda m: [
        delayed(uses_mapper)(i, Mapper()) for i in range(N_CHUNKS)
    ],
    "bag-map": lambda m: db.from_sequence(range(N_CHUNKS * 3), npartitions=N_CHUNKS).map(
        uses_mapper, m
    ),
    "bag-map-partitions-sum": lambda m: db.from_sequence(
        range(N_CHUNKS * 3), npartitions=N_CHUNKS
    )
    .map_partitions(lambda part, mm: [len(mm.s) + p for p in part], m)
    .sum(),
}


class HoistedRuns(SchedulerPlugin):
    """A scheduler plugin that counts, per hoisted key, how often a worker produced it.

    Each time is one shipping and one unpickling of the object on a worker.
    """

    name = "hoisted-runs"

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def transition(self, key, start, finish, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        if finish == "memory" and isinstance(key, str) and key.startswith("dedup-"):
            self.runs[key] = self.runs.get(key, 0) + 1
