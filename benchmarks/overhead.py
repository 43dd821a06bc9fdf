"""What the pass adds to dask's own array optimization.

    python -m dedupgraph.benchmarks.overhead                        # ~60,000 tasks
    python -m dedupgraph.benchmarks.overhead --tasks 10000 200000 --repeat 5

The graph is ``(zeros.map_blocks(f, obj) + 1).sum()`` over ``chunks=(1, 10)``,
sized so that the unoptimized graph has about ``--tasks`` tasks, in three
scenarios:

- ``none``: ``obj`` is a small int, nothing to hoist;
- ``shared``: ``obj`` holds a 30,000-row Series (~241 KB pickled), one object
  shared by every ``map_blocks`` task;
- ``distinct``: every group of 10 chunks gets its own ~100 KB numpy array (the
  array is built per group and concatenated), so there are tasks/30 distinct
  medium objects to fingerprint and hoist.

For each, the best of ``--repeat`` runs of ``dask.array.optimization.optimize``
on a fresh HighLevelGraph, then of the dedup stage alone on its output
(``dedupgraph.optimizer.deduplicate_graph``).  The overhead is the second over
the first: what ``array_optimize=dedupgraph.dedup`` adds to dask's own work.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.array.optimization import optimize

from .seed import Mapper
from dedupgraph.core.pipeline import deduplicate_graph, task_graph
from dedupgraph.settings import Settings

SCENARIOS = ("none", "shared", "distinct")
GROUP = 10  # chunks sharing one object in the "distinct" scenario


def add_obj(block: np.ndarray, obj: Any) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return block + obj[0]
    if isinstance(obj, Mapper):
        return block + len(obj.s) % 7
    return block + obj


def build(scenario: str, tasks: int) -> da.Array:
    """The collection for ``scenario`` with about ``tasks`` tasks before optimization."""
    rows = max(GROUP, tasks // 5)  # zeros, map_blocks, +1, and a sum tree of ~2 tasks a chunk
    if scenario == "distinct":
        parts = [
            da.zeros((GROUP, 10), chunks=(1, 10)).map_blocks(add_obj, np.full(12_500, g, dtype="f8"))
            for g in range(rows // GROUP)
        ]
        return (da.concatenate(parts) + 1).sum()
    obj: Any = {"none": 1, "shared": Mapper()}[scenario]
    return (da.zeros((rows, 10), chunks=(1, 10)).map_blocks(add_obj, obj) + 1).sum()


@dataclass(frozen=True)
class Row:
    scenario: str
    tasks: int
    dask_s: float
    pass_s: float
    hoisted: int

    @property
    def overhead(self) -> float:
        return self.pass_s / self.dask_s


def _best(runs: int, once: Callable[[], float]) -> float:
    return min(once() for _ in range(runs))


def measure(scenario: str, tasks: int, repeat: int = 3) -> Row:
    """Best-of-``repeat`` timings of dask's optimize and of the dedup stage on its output."""
    collection = build(scenario, tasks)
    keys = collection.__dask_keys__()
    ntasks = len(collection.__dask_graph__())
    optimized: dict[Any, Any] = {}

    def dask_once() -> float:
        fresh = build(scenario, tasks)  # layers cache their materialization
        gc.collect()
        start = time.perf_counter()
        optimized["graph"] = optimize(fresh.__dask_graph__(), fresh.__dask_keys__())
        return time.perf_counter() - start

    dask_s = _best(repeat, dask_once)
    graph = task_graph(optimized.pop("graph"))
    out: dict[str, Any] = {}

    def pass_once() -> float:
        gc.collect()
        start = time.perf_counter()
        out["graph"] = deduplicate_graph(graph, Settings())
        return time.perf_counter() - start

    pass_s = _best(repeat, pass_once)
    hoisted = sum(1 for k in out["graph"] if isinstance(k, str) and k.startswith("dedup-"))
    del keys
    return Row(scenario, ntasks, dask_s, pass_s, hoisted)


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | tasks | dask optimize (s) | dedup pass (s) | overhead | hoisted keys |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.tasks} | {r.dask_s:.3f} | {r.pass_s:.3f} | {r.overhead:.1%} | {r.hoisted} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[60_000])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [measure(s, n, args.repeat) for n in args.tasks for s in args.scenarios]
    print(markdown(rows))


if __name__ == "__main__":
    main()
