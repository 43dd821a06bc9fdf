"""What hoisting costs and saves, over a grid of object size and task count: where it breaks even.

    python -m dedupgraph.benchmarks.break_even                      # the grid below, once each
    python -m dedupgraph.benchmarks.break_even --sizes 1000 16000 --tasks 100 1000 --output grid.csv
    python -m dedupgraph.benchmarks.break_even --no-grid --dependency-tasks 1000 4000
    python -m dedupgraph.benchmarks.break_even --no-grid --bag-chunks 1000 4000 --rounds 2 --bag-specs

An object of ``--sizes`` bytes (random ``bytes``: nothing to compress, nothing
shared by accident) is passed to ``map_blocks`` over ``--tasks`` chunks of one
element, and persisted on a fresh ``LocalCluster`` of 2 worker processes x 1
thread (no memory limit), per cell and mode:

- ``inline``: plain dask, the object in every task;
- ``hoisted``: the config route with ``min-bytes`` 1 B, so that the object is
  hoisted whatever its size, and functions and partials excluded, so that
  it is the only thing hoisted (dask's ``zeros`` partial, 2.3 KB, would go
  too): one key, one more dependency per task.

After the persist, with the results held: the wall time of the persist, and
the memory of the scheduler and the workers (RSS, less what they took
before the persist). A cell whose inline payload (size x tasks) would pass
``--cap`` is left out: hoisting wins there by construction. Each cell runs
once: the grid is for the shape of the curve, not for small differences.
Each task count also runs once with an empty object, the baseline.

``--dependency-tasks``: what one more dependency per task costs, apart from
any object.  The same ``map_blocks`` over that many chunks, with the small
int ``0`` in each task or with a ``dask.delayed(0)`` (one more key that every
task depends on), persisted on one in-process ``LocalCluster`` (scheduler and
2 workers in this process, so that ``tracemalloc`` counts all of them exactly,
where RSS is too coarse for a few hundred bytes a task), ``--rounds`` times
each, interleaved; medians of the memory traced after the persist, less
before, and of the persist's wall time (slowed by ``tracemalloc``: compare the
two, not with other tables).

``--bag-chunks``: what a bag partition costs the workers in dask's fused
shape.  ``Bag.map(f, obj)`` with a plain value is fused by dask's bag
optimizer with ``from_sequence`` into one task per partition, plus an alias
under the map's key; with a future (``client.scatter``) or a ``Delayed``
argument it is not fused.  The pass keeps dask's keys, hence the fused
shape, and on a worker the fused task's spec (its inner graph) stays as long
as its alias is in memory, as the alias's released dependency.  Memory growth
per extra chunk (``MemorySampler``, a fresh LocalCluster of 2 worker
processes per mode and round, the order of the modes alternating) of
``fused``: plain dask, the argument a small int; ``unfused``: that int,
scattered; ``dedup``: a ``Mapper`` of ``--bag-object-kb`` with
``dedupgraph.enable()``; ``scatter``: that ``Mapper`` scattered with
``broadcast=True``.  ``--bag-specs`` adds, per mode, the bytes per chunk of
unpickled task specs a single worker still holds after the persist
(``tracemalloc`` inside the worker process: what was allocated under
distributed's ``pickle.loads``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import logging
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np
from distributed import Client, LocalCluster, wait
from distributed.diagnostics import MemorySampler

import dedupgraph

from .seed import Mapper, local_cluster

SIZES = (1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000)
TASKS = (100, 1_000, 10_000, 100_000)
CAP = 1_500_000_000
MODES = ("inline", "hoisted")
# what else min-bytes 1 B would hoist from these tasks: the function, and dask's zeros partial
ONLY_THE_OBJECT = ["builtins.function", "functools.partial"]


def uses(block: np.ndarray, obj: bytes) -> np.ndarray:
    return block + len(obj)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


@dataclass(frozen=True)
class Cell:
    size: int
    tasks: int
    mode: str
    persist_s: float
    scheduler_bytes: int  #: the scheduler's RSS after the persist, less before
    workers_bytes: int  #: the workers' RSS after the persist, less before
    hoisted: bool  #: whether the graph had a hoisted key

    def per_task(self) -> float:
        """Scheduler and workers' memory added by the persist, per task."""
        return (self.scheduler_bytes + self.workers_bytes) / self.tasks


def one_cell(size: int, tasks: int, mode: str) -> Cell:
    obj = os.urandom(size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sending large graph": what inline means
        with LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=0, dashboard_address=None, silence_logs=logging.CRITICAL
        ) as cluster, Client(cluster) as client:
            arr = da.zeros((tasks, 1), chunks=(1, 1)).map_blocks(uses, obj, meta=np.array((), dtype="f8"))
            switch = dedupgraph.enable(min_bytes=1, exclude=ONLY_THE_OBJECT) if mode == "hoisted" else dask.config.set({})
            client.run(gc.collect)
            client.run_on_scheduler(gc.collect)
            before = client.run_on_scheduler(_rss), sum(client.run(_rss).values())
            start = time.perf_counter()
            with switch:
                (held,) = client.persist([arr])
            wait(held)
            seconds = time.perf_counter() - start
            hoisted = any(str(k).startswith("dedup-") for k in client.run_on_scheduler(_keys))
            after = client.run_on_scheduler(_rss), sum(client.run(_rss).values())
            del held
    return Cell(size, tasks, mode, seconds, after[0] - before[0], after[1] - before[1], hoisted)


@dataclass(frozen=True)
class DependencyCost:
    tasks: int
    without_bytes: float  #: traced memory a persist added, per task, without the extra dependency
    with_bytes: float  #: the same, with it
    without_s: float  #: the persist's wall time
    with_s: float

    def row(self) -> str:
        return (
            f"| {self.tasks} | {self.without_bytes:,.0f} | {self.with_bytes:,.0f} | {self.with_bytes - self.without_bytes:,.0f} "
            f"| {self.without_s:.2f} / {self.with_s:.2f} | {(self.with_s - self.without_s) / self.tasks * 1e6:,.0f} |"
        )


DEPENDENCY_HEADER = (
    "| tasks | traced per task, without (B) | with one more dependency (B) | added (B) | persist without / with (s) | added per task (µs) |\n"
    "|---|---|---|---|---|---|"
)


def dependency_cost(tasks: int, rounds: int = 3) -> DependencyCost:
    """Medians over ``rounds`` interleaved persists of ``tasks`` tasks, with and without one more dependency each."""
    import statistics
    import tracemalloc

    def persisted(client: Client, extra: bool) -> tuple[int, float]:
        arg = dask.delayed(0, name="one-more-dependency") if extra else 0
        arr = da.zeros((tasks, 1), chunks=(1, 1)).map_blocks(uses_nothing, arg, meta=np.array((), dtype="f8"))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        (held,) = client.persist([arr])
        wait(held)
        seconds = time.perf_counter() - start
        gc.collect()
        added = tracemalloc.get_traced_memory()[0] - before
        del held
        return added, seconds

    runs: dict[bool, list[tuple[int, float]]] = {False: [], True: []}
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=logging.CRITICAL
            ) as cluster, Client(cluster) as client:
                for r in range(rounds):
                    for extra in (False, True) if r % 2 == 0 else (True, False):
                        runs[extra].append(persisted(client, extra))
    finally:
        tracemalloc.stop()
    memory = {k: statistics.median(m for m, _ in v) / tasks for k, v in runs.items()}
    wall = {k: statistics.median(s for _, s in v) for k, v in runs.items()}
    return DependencyCost(tasks, memory[False], memory[True], wall[False], wall[True])


def uses_nothing(block: np.ndarray, arg: int) -> np.ndarray:
    return block


def _keys(dask_scheduler: object) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks]  # type: ignore[attr-defined]


def grid(sizes: Sequence[int], tasks: Sequence[int], cap: int) -> list[Cell]:
    cells = []
    for n in tasks:
        fitting = [size for size in sizes if size * n <= cap]
        # first the baseline: the same tasks with an empty object, what no hoisting can go below
        for size in (0, *fitting) if fitting else ():
            for mode in MODES if size else ("inline",):
                cells.append(one_cell(size, n, mode))
                print(cells[-1], flush=True)
    return cells


def markdown(cells: Sequence[Cell]) -> str:
    """Per cell: what hoisting saved of memory per task, and its persist time against inline."""
    lines = [
        "| tasks | size (B) | inline: sched + workers per task (B) | hoisted (B) | saved per task (B) "
        "| hoisted over an empty object, per task (B) | persist inline / hoisted / empty (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(c.size, c.tasks, c.mode): c for c in cells}
    for n in sorted({c.tasks for c in cells}):
        empty = by.get((0, n, "inline"))
        for size in sorted({c.size for c in cells if c.tasks == n and c.size}):
            a, b = by.get((size, n, "inline")), by.get((size, n, "hoisted"))
            if a is None or b is None:
                continue
            per_a, per_b = a.per_task(), b.per_task()
            over = f"{per_b - empty.per_task():,.0f}" if empty else ""
            lines.append(
                f"| {n} | {size} | {per_a:,.0f} | {per_b:,.0f} | {per_a - per_b:,.0f} | {over} "
                f"| {a.persist_s:.2f} / {b.persist_s:.2f} / {empty.persist_s if empty else float('nan'):.2f} |"
            )
    return "\n".join(lines)


def read_cells(path: Path) -> list[Cell]:
    """The cells of a CSV file that ``--output`` wrote."""
    with path.open(newline="") as f:
        return [
            Cell(int(r["size"]), int(r["tasks"]), r["mode"], float(r["persist_s"]), int(r["scheduler_bytes"]),
                 int(r["workers_bytes"]), r["hoisted"] == "True")
            for r in csv.DictReader(f)
        ]


def plot(cells: Sequence[Cell], path: Path) -> Path:
    """Memory saved per task by hoisting, against the object's size, one line per task count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(c.size, c.tasks, c.mode): c for c in cells}
    fig, ax = plt.subplots(figsize=(8, 5))
    for n in sorted({c.tasks for c in cells}):
        points = []
        for size in sorted({c.size for c in cells if c.tasks == n and c.size}):
            a, b = by.get((size, n, "inline")), by.get((size, n, "hoisted"))
            if a is not None and b is not None:
                saved = a.per_task() - b.per_task()
                points.append((size, saved / 1000))
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{n:,} tasks")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)  # linear within +-1 KB, where the break-even is
    ax.set(
        xlabel="object size (bytes)", ylabel="memory saved per task by hoisting (KB)",
        title="Cluster memory (scheduler + 2 workers, RSS) inline minus hoisted, per task",
    )
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --- the fused bag shape (--bag-chunks) ---------------------------------------


BAG_MODES = ("fused", "unfused", "dedup", "scatter")
ROWS_PER_KB = 125  # a Mapper of n rows pickles to about 8n bytes


def bag_item(x: int, arg: Any) -> int:
    return x + (arg if isinstance(arg, int) else len(arg.s)) % 7


def _bag_argument(mode: str, mapper: Mapper, client: Client) -> Any:
    arg: Any = 7 if mode in ("fused", "unfused") else mapper
    # one future for the whole run: scattering again would give the same key, which
    # the earlier future's release could take away from a persist under way
    return client.scatter(arg, broadcast=True) if mode in ("unfused", "scatter") else arg


def _bag_persist(mode: str, start: int, count: int, arg: Any, client: Client) -> Any:
    bag = db.from_sequence(range(start, start + count), npartitions=count).map(bag_item, arg)
    with dedupgraph.enable() if mode == "dedup" else contextlib.nullcontext():
        persisted = client.persist(bag)
    wait(persisted)
    return persisted


def bag_growth(mode: str, chunks: Sequence[int], object_kb: float, settle_s: float = 2.0) -> float:
    """KB of worker memory per extra chunk from the first chunk count to the last, in a fresh cluster."""
    mapper = Mapper(int(object_kb * ROWS_PER_KB))
    sampler = MemorySampler()
    held, previous, settled = [], 0, []
    with local_cluster(memory_limit="4GiB") as client:
        arg = _bag_argument(mode, mapper, client)
        held.append(_bag_persist(mode, 0, 2, arg, client))  # imports on the workers, before measuring
        for count in chunks:
            label = f"{mode}/{count}"
            with sampler.sample(label, client=client, interval=0.1):
                held.append(_bag_persist(mode, previous, count - previous, arg, client))
                time.sleep(settle_s)
            values = [v for _, v in sampler.samples[label]]
            settled.append(statistics.median(values[len(values) // 2 :]))
            previous = count
    return (settled[-1] - settled[0]) / (chunks[-1] - chunks[0]) / 1024


def _bag_trace_start() -> None:
    import tracemalloc

    gc.collect()
    tracemalloc.start(8)  # deep enough to reach the unpickling frame from dask's __setstate__


def _bag_trace_unpickled() -> int:
    """Bytes still held that were allocated while unpickling (under ``pickle.loads`` in distributed)."""
    import tracemalloc

    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    where = tracemalloc.Filter(True, "*distributed/protocol/pickle.py", all_frames=True)
    return sum(stat.size for stat in snapshot.filter_traces([where]).statistics("filename"))


def bag_spec_bytes(mode: str, chunks: int, object_kb: float) -> float:
    """Bytes per chunk of unpickled specs held by the worker of a one-worker cluster after a persist."""
    mapper = Mapper(int(object_kb * ROWS_PER_KB))
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
        with Client(cluster) as client:
            arg = _bag_argument(mode, mapper, client)
            warm = _bag_persist(mode, 0, 2, arg, client)
            client.run(_bag_trace_start)
            held = _bag_persist(mode, 2, chunks, arg, client)
            (total,) = client.run(_bag_trace_unpickled).values()
            del warm, held
    return total / chunks


def bag_shape(chunks: Sequence[int], rounds: int, object_kb: float, specs: bool) -> dict[str, list[float]]:
    """Every mode of the bag part, ``rounds`` times, printed as tables; the growths per mode."""
    results: dict[str, list[float]] = {mode: [] for mode in BAG_MODES}
    for index in range(rounds):
        for mode in BAG_MODES if index % 2 == 0 else reversed(BAG_MODES):
            results[mode].append(bag_growth(mode, chunks, object_kb))
            print(f"round {index + 1}: {mode:8} {results[mode][-1]:6.2f} KB per chunk", flush=True)
    print("\n| bag mode | KB per extra chunk (each round) | median |\n|---|---|---|")
    for mode, values in results.items():
        print(f"| {mode} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} |")
    if specs:
        print("\n| bag mode | unpickled specs held per chunk (bytes) |\n|---|---|")
        for mode in BAG_MODES:
            print(f"| {mode} | {bag_spec_bytes(mode, chunks[-1], object_kb):.0f} |", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.break_even", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="object sizes in bytes")
    parser.add_argument("--tasks", type=int, nargs="+", default=list(TASKS), help="task counts")
    parser.add_argument("--cap", type=int, default=CAP, help="largest inline payload (size x tasks) to run, in bytes")
    parser.add_argument("--output", type=Path, help="also write the cells to this CSV file")
    parser.add_argument("--figure", type=Path, help="also plot the memory saved per task to this PNG file")
    parser.add_argument("--from-csv", type=Path, help="run nothing: read the cells of an earlier --output")
    parser.add_argument("--no-grid", action="store_true", help="skip the grid")
    parser.add_argument("--dependency-tasks", type=int, nargs="+", default=[], help="also measure one more dependency per task at these task counts")
    parser.add_argument("--rounds", type=int, default=3, help="persists of each kind per --dependency-tasks count; rounds of --bag-chunks")
    parser.add_argument("--bag-chunks", type=int, nargs="+", default=[], help="also measure the fused bag shape, growing over these partition counts")
    parser.add_argument("--bag-object-kb", type=float, default=60.0, help="the object of --bag-chunks' dedup and scatter modes, in KB")
    parser.add_argument("--bag-specs", action="store_true", help="with --bag-chunks: the unpickled specs per chunk on a worker too")
    args = parser.parse_args(argv)
    if args.bag_chunks and len(args.bag_chunks) < 2:
        parser.error("--bag-chunks needs at least two counts")
    if args.dependency_tasks:
        print(DEPENDENCY_HEADER)
        for n in args.dependency_tasks:
            print(dependency_cost(n, args.rounds).row(), flush=True)
    if args.bag_chunks:
        bag_shape(sorted(args.bag_chunks), args.rounds, args.bag_object_kb, args.bag_specs)
    if args.no_grid:
        return
    cells = read_cells(args.from_csv) if args.from_csv else grid(args.sizes, args.tasks, args.cap)
    print(markdown(cells))
    if args.output and not args.from_csv:
        with args.output.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(Cell)])
            writer.writeheader()
            writer.writerows(asdict(c) for c in cells)
    if args.figure:
        plot(cells, args.figure)


if __name__ == "__main__":
    main()
