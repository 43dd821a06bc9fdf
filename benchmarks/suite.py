"""The seed's fixes side by side: memory, time and payload per mode, with plots.

    dedupgraph bench --quick                  # under two minutes
    dedupgraph bench --output results/        # the full matrix (about an hour)
    dedupgraph bench --collections array --sizes 250KB --chunks 250 --chunks 1000
    python -m dedupgraph.benchmarks.suite --quick

Every cell persists a collection whose every task uses one object (a ``Mapper``
holding a pandas Series, sized to ~60 KB, ~250 KB or ~2 MB pickled) on a
``LocalCluster`` of 2 worker processes x 1 thread, for growing chunk counts,
and records cluster memory (``MemorySampler``) after ``persist`` + ``wait`` and
its peak, memory growth per extra chunk, the persist's wall time, the bytes of
the graph the client sends, and the summed size of the tasks' specs.  Every
mode, collection and size gets a fresh cluster.

Modes: ``plain`` (dask's default), ``dedup-config``
(``dask.config.set(array_optimize=dedupgraph.dedup)`` and friends, via
``dedupgraph.enable()``), ``scheduler`` (the scheduler route: the cluster's
scheduler started with the ``dedupgraph.scheduler`` preload, nothing switched
on in the client), ``deduplicate`` and ``deduplicate-broadcast``
(``dedupgraph.deduplicate(..., client=client, broadcast=...)``),
``scatter-broadcast`` (``client.scatter(obj, broadcast=True)``, the best known
manual fix) and ``delayed-create`` (the object built inside ``dask.delayed``).

Collections: ``array`` (``map_blocks``), ``delayed``, ``bag`` (``map``),
``dataframe`` (dask-expr ``map_partitions``) and ``array-expr`` (``map_blocks``
with ``array.query-planning: True``, which dask reads once per process: those
cells run in a child process).
A second part times the pass against dask's own array optimization
(``dedupgraph.benchmarks.overhead``); the last two measure one copy per host
(``dedupgraph.benchmarks.host_memory``) and one object in computation after
computation (``dedupgraph.benchmarks.repeat``).  Results go to ``--output``: ``cells.csv``,
``overhead.csv``, ``memory_samples.csv``, ``results.md`` and three PNG plots.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import collections_to_expr
from distributed import Client, wait
from distributed.diagnostics import MemorySampler
from distributed.protocol.pickle import dumps as distributed_dumps

import dedupgraph
from dedupgraph.routes.activation import SCHEDULER_PRELOADS_KEY, SCHEDULER_PRELOAD, with_preload
from dedupgraph.core.pipeline import deduplicate_graph
from . import overhead
from .host_memory import Part as HostMemoryPart
from .repeat import Part as RepeatPart
from .seed import Mapper, local_cluster

MODES = (
    "plain",
    "dedup-config",
    "scheduler",
    "deduplicate",
    "deduplicate-broadcast",
    "scatter-broadcast",
    "delayed-create",
)
COLLECTIONS = ("array", "delayed", "bag", "dataframe", "array-expr")
# collections the config route has no optimizer key for: it embeds there, as plain dask
NO_CONFIG_HOOK = ("dataframe", "array-expr")
# Series rows for each pickled size; "tiny" (0.7 KB, never hoisted) measures what a chunk
# costs the workers with no large object at all: the floor no mode can go below
SIZES = {"tiny": 10, "8KB": 1_000, "16KB": 2_000, "32KB": 4_000, "60KB": 7_500, "250KB": 30_000, "2MB": 250_000}
MEMORY_BUDGET = 6 * 2**30  # cells whose embedded copies would need more are skipped
# A persist that takes longer has stalled (paused workers): the cell says so, the run goes on.
PERSIST_TIMEOUT_S = 300


@dataclass(frozen=True)
class Plan:
    chunks: tuple[int, ...]
    sizes: tuple[str, ...]
    collections: tuple[str, ...]
    modes: tuple[str, ...]
    overhead_tasks: tuple[int, ...]
    settle_s: float
    overhead_repeat: int = 1  # best of this many timings
    # a fresh cluster for every collection and size (restarting one is less
    # reliable: a restart once waited 120 s for workers that never came back)
    fresh_cluster: bool = True
    # share="host": peak host memory per sharing mode and worker count, a part of its own
    host_memory: HostMemoryPart | None = None
    # one object in computation after computation: what each costs, per mode (issue 20)
    repeat: RepeatPart | None = None


FULL = Plan((250, 1000, 4000), ("60KB", "250KB", "2MB"), COLLECTIONS, MODES, (10_000, 100_000, 200_000), 2.0, overhead_repeat=3)
QUICK = Plan((40, 200), ("250KB",), COLLECTIONS, MODES, (2_000, 10_000), 0.6)
SMOKE = Plan((3, 6), ("60KB",), COLLECTIONS, MODES, (500,), 0.3, fresh_cluster=False)
FULL = dataclasses.replace(FULL, host_memory=HostMemoryPart(), repeat=RepeatPart())
QUICK = dataclasses.replace(
    QUICK,
    host_memory=HostMemoryPart(mb=50.0, sweep=(1, 4), sweep_modes=("host", "process"), rounds=1),
    repeat=RepeatPart(sizes=(20.0,), computations=4, chunks=8, collections=("array",), python_mb=5.0),
)


@dataclass(frozen=True)
class Cell:
    mode: str
    collection: str
    size: str
    object_kb: float
    chunks: int
    memory_mb: float
    peak_mb: float
    growth_kb_per_chunk: float | None
    persist_s: float
    graph_sent_kb: float
    task_payload_kb: float
    result: float
    note: str = ""


# --- the user's functions, one per collection type -------------------------


def block_fn(block: np.ndarray, mapper: Mapper) -> np.ndarray:
    return block + len(mapper.s) % 7


def item_fn(x: int, mapper: Mapper) -> int:
    return x + len(mapper.s) % 7


def frame_fn(part: pd.DataFrame, mapper: Mapper) -> pd.DataFrame:
    return part.assign(y=part.x + len(mapper.s) % 7)


def build(collection: str, start: int, count: int, arg: Any) -> Any:
    """``count`` chunks (numbered from ``start``) of ``collection``, each task using ``arg``."""
    if collection in ("array", "array-expr"):  # which one is dask.array's choice in this process
        zeros = da.zeros((count, 10), chunks=(1, 10))
        return zeros.map_blocks(block_fn, arg, meta=np.array((), dtype="f8"))
    if collection == "delayed":
        return [dask.delayed(item_fn)(start + i, arg) for i in range(count)]
    if collection == "bag":
        return db.from_sequence(range(start, start + count), npartitions=count).map(item_fn, arg)
    frame = pd.DataFrame({"x": np.arange(start, start + count)})
    return dd.from_pandas(frame, npartitions=count).map_partitions(frame_fn, arg, meta={"x": "i8", "y": "i8"})


def total(persisted: Any) -> float:
    """A checksum of a persisted collection, the same in every mode."""
    if isinstance(persisted, list):
        return float(sum(dask.compute(*persisted)))
    if isinstance(persisted, dd.DataFrame):
        return float(persisted.y.sum().compute())
    return float(persisted.sum().compute())


# --- modes ------------------------------------------------------------------


def persist_in_mode(mode: str, collection: str, start: int, count: int, mapper: Mapper, client: Client) -> Any:
    if mode == "scatter-broadcast":
        arg: Any = client.scatter(mapper, broadcast=True)
    elif mode == "delayed-create":
        arg = dask.delayed(Mapper)(len(mapper.s))
    else:
        arg = mapper
    coll = build(collection, start, count, arg)
    colls = coll if isinstance(coll, list) else [coll]
    if mode.startswith("deduplicate"):
        colls = list(dedupgraph.deduplicate(*colls, client=client, broadcast=mode.endswith("broadcast")))
    with dedupgraph.enable() if mode == "dedup-config" else contextlib.nullcontext():
        persisted = client.persist(colls)
        wait(persisted, timeout=PERSIST_TIMEOUT_S)
    return persisted if isinstance(coll, list) else persisted[0]


def embeds(mode: str, collection: str) -> bool:
    """Whether every task carries its own copy of the object in this cell (see ``_applies``)."""
    # the config route has no optimizer hook for dask-expr DataFrames and array-expr: plain dask there
    return mode == "plain" or (mode == "dedup-config" and collection in NO_CONFIG_HOOK)


def graph_sizes(mode: str, collection: str, count: int, mapper: Mapper, client: Client) -> tuple[int, int]:
    """(bytes the client pickles for the graph, summed bytes of each task's spec)."""
    persisted_arg: Any = mapper
    if mode == "scatter-broadcast":
        persisted_arg = client.scatter(mapper, broadcast=True)
    elif mode == "delayed-create":
        persisted_arg = dask.delayed(Mapper)(len(mapper.s))
    coll = build(collection, 0, count, persisted_arg)
    colls = coll if isinstance(coll, list) else [coll]
    if mode.startswith("deduplicate"):
        colls = list(dedupgraph.deduplicate(*colls, client=client, broadcast=mode.endswith("broadcast")))
    with dedupgraph.enable() if mode == "dedup-config" else contextlib.nullcontext():
        expr = collections_to_expr(colls)
        sent = len(distributed_dumps(expr))  # as the client pickles it, in one call
        graph = dict(expr.optimize().__dask_graph__())
    if mode == "scheduler":  # what the route makes of it on the scheduler
        graph = dict(deduplicate_graph(graph, dedupgraph.Settings.from_config()))
    payload = sum(len(cloudpickle.dumps(node)) for node in graph.values())
    return sent, payload


# --- measuring ---------------------------------------------------------------


def cluster(mode: str = "plain") -> contextlib.AbstractContextManager[Client]:
    """The cell's cluster; in ``scheduler`` mode its scheduler runs the route (a scheduler preload)."""
    if mode != "scheduler":
        return local_cluster(memory_limit="4GiB")
    preloads = with_preload(dask.config.get(SCHEDULER_PRELOADS_KEY, None), SCHEDULER_PRELOAD)
    stack = contextlib.ExitStack()
    with dask.config.set({SCHEDULER_PRELOADS_KEY: preloads}):  # read when the scheduler starts
        client = stack.enter_context(local_cluster(memory_limit="4GiB"))

    @contextlib.contextmanager
    def running() -> Any:
        with stack:
            yield client

    return running()


def _settled(sampler: MemorySampler, label: str) -> tuple[float, float]:
    values = [v for _, v in sampler.samples[label]]
    tail = sorted(values[len(values) // 2 :])
    return tail[len(tail) // 2], max(values)


def _noted(mode: str, collection: str, size: str, object_bytes: int, count: int, note: str) -> Cell:
    return Cell(mode, collection, size, object_bytes / 1024, count, 0, 0, None, 0, 0, 0, 0, note)


def warm_up(mode: str, collection: str, client: Client, settle_s: float) -> None:
    """Run the cell's own code once at a tiny size, then drop it.

    Fresh worker processes import numpy, pandas and dask's collection modules
    on their first tasks (~50 MB each): without this, whether that happened
    before the first measurement would depend on which worker ran what.
    """
    tiny = persist_in_mode(mode, collection, 0, 2, Mapper(10), client)
    total(tiny)
    del tiny
    time.sleep(settle_s)


def measure_cells(mode: str, collection: str, size: str, plan: Plan, client: Client, sampler: MemorySampler) -> list[Cell]:
    mapper = Mapper(SIZES[size])
    object_bytes = len(cloudpickle.dumps(mapper))
    warm_up(mode, collection, client, plan.settle_s)
    cells: list[Cell] = []
    held, previous, previous_memory = [], 0, None
    for count in plan.chunks:
        if embeds(mode, collection) and object_bytes * count > MEMORY_BUDGET:
            # one copy per task: more than the cluster's memory limit
            note = f"skipped: {count} embedded copies would need {object_bytes * count / 2**30:.1f} GiB"
            cells.append(_noted(mode, collection, size, object_bytes, count, note))
            continue
        label = f"{mode}/{collection}/{size}/{count}"
        with sampler.sample(label, client=client, interval=0.1):
            start = time.perf_counter()
            try:
                held.append(persist_in_mode(mode, collection, previous, count - previous, mapper, client))
            except TimeoutError:
                note = f"stalled: persist not done after {PERSIST_TIMEOUT_S} s (workers out of memory?)"
                cells.append(_noted(mode, collection, size, object_bytes, count, note))
                break
            persist_s = time.perf_counter() - start
            time.sleep(plan.settle_s)
        memory, peak = _settled(sampler, label)
        growth = None if previous_memory is None else (memory - previous_memory) / (count - previous) / 1024
        sent, payload = graph_sizes(mode, collection, count, mapper, client)
        result = sum(total(p) for p in held)
        cells.append(
            Cell(mode, collection, size, object_bytes / 1024, count, memory / 2**20, peak / 2**20,
                 growth, persist_s, sent / 1024, payload / 1024, result)
        )
        previous, previous_memory = count, memory
    return cells


def run_cells(
    plan: Plan, progress: Callable[[str], None], checkpoint: Callable[[list[Cell]], None] = lambda cells: None
) -> tuple[list[Cell], MemorySampler]:
    """Every cell of ``plan``; ``checkpoint`` gets the cells so far after each group (an hour's run).

    With ``plan.fresh_cluster``, each group gets a cluster of its own, whose
    scheduler in ``scheduler`` mode starts with the route's preload; without,
    one cluster serves every group, the route switched on for ``scheduler`` mode.
    """
    sampler = MemorySampler()
    cells: list[Cell] = []
    work = [(c, s) for c in plan.collections for s in plan.sizes]
    done, total_cells, begun = 0, len(plan.modes) * len(work), time.perf_counter()
    elsewhere = tuple(c for c in plan.collections if c in CHILD_COLLECTIONS and not array_expr_here())
    from_child = cells_in_child(dataclasses.replace(plan, collections=elsewhere)) if elsewhere else []
    with contextlib.ExitStack() as whole:
        shared = None if plan.fresh_cluster else whole.enter_context(cluster())
        for mode in plan.modes:
            for collection, size in work:
                started = time.perf_counter()
                if (mode, collection) in UNSUPPORTED:
                    pass
                elif collection in elsewhere:
                    cells += [c for c in from_child if (c.mode, c.collection, c.size) == (mode, collection, size)]
                elif shared is not None:
                    with route_switched(shared, mode == "scheduler"):
                        cells += measure_cells(mode, collection, size, plan, shared, sampler)
                else:
                    with cluster(mode) as client:
                        cells += measure_cells(mode, collection, size, plan, client, sampler)
                checkpoint(cells)
                done += 1
                elapsed = time.perf_counter() - begun
                left = elapsed / done * (total_cells - done)
                skipped = UNSUPPORTED.get((mode, collection))
                progress(
                    f"[{done}/{total_cells}] {mode:22} {collection:10} {size:6} "
                    + (f"skipped: {skipped}" if skipped else f"{time.perf_counter() - started:6.1f}s")
                    + f"   elapsed {_clock(elapsed)}, about {_clock(left)} left"
                )
    return cells, sampler


@contextlib.contextmanager
def route_switched(client: Client, on: bool) -> Any:
    """The scheduler route on for ``client``'s (in-process) scheduler while the block runs, if ``on``."""
    if not on:
        yield
        return
    client.run_on_scheduler(_switch_route, on=True)
    try:
        yield
    finally:
        client.run_on_scheduler(_switch_route, on=False)


def _switch_route(dask_scheduler: Any, on: bool) -> None:
    from dedupgraph.routes.distributed import plugin as scheduler

    if on:
        scheduler.install(dask_scheduler)
    else:
        scheduler.uninstall(dask_scheduler)


# Collections that need a process of their own: dask.array reads array.query-planning once, at import.
CHILD_COLLECTIONS = ("array-expr",)
# (mode, collection) pairs that plain dask cannot run: no cells, a line in the report
UNSUPPORTED = {
    ("delayed-create", "array-expr"): "dask's array-expr loses a delayed map_blocks argument when "
    "persisting on distributed (futures cancelled: lost dependencies), with or without dedupgraph",
}


def array_expr_here() -> bool:
    """Whether ``dask.array`` in this process is array-expr (``array.query-planning: True``)."""
    return type(da.ones(1)).__module__.startswith("dask.array._array_expr")


def cells_in_child(plan: Plan) -> list[Cell]:
    """The cells of ``plan`` (array-expr collections), measured by this suite in a child process."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "plan.json").write_text(json.dumps(dataclasses.asdict(plan)))
        env = {**os.environ, "DASK_ARRAY__QUERY_PLANNING": "True"}
        # its progress lines go to stderr, as the parent's do
        subprocess.run([sys.executable, "-m", "dedupgraph.benchmarks.suite", "--cells-only", tmp], env=env, check=True)
        with Path(tmp, "cells.csv").open() as f:
            return [_cell(row) for row in csv.DictReader(f)]


def _cell(row: dict[str, str]) -> Cell:
    types = {f.name: f.type for f in dataclasses.fields(Cell)}
    values: dict[str, Any] = {}
    for name, text in row.items():
        kind = str(types[name])
        if "None" in kind:
            values[name] = None if text == "" else float(text)
        elif "float" in kind:
            values[name] = float(text)
        elif "int" in kind:
            values[name] = int(text)
        else:
            values[name] = text
    return Cell(**values)


def _cells_only(folder: Path) -> None:
    """The child's side of :func:`cells_in_child`: the plan's cells to ``cells.csv``, nothing else."""
    fields = json.loads((folder / "plan.json").read_text())
    plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if not array_expr_here():
        raise RuntimeError("array-expr cells need DASK_ARRAY__QUERY_PLANNING=True in the child's environment")
    cells, _ = run_cells(plan, lambda line: print(f"array-expr, in a child process: {line}", file=sys.stderr, flush=True))
    write_csv(folder / "cells.csv", cells)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def check_results(cells: Sequence[Cell]) -> None:
    """Every mode must compute the same thing."""
    by_cell: dict[tuple[str, str, int], set[float]] = {}
    for c in cells:
        if not c.note:
            by_cell.setdefault((c.collection, c.size, c.chunks), set()).add(c.result)
    wrong = {k: v for k, v in by_cell.items() if len(v) != 1}
    if wrong:
        raise AssertionError(f"modes disagree on results: {wrong}")


# --- output ------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[Any]) -> None:
    with path.open("w", newline="") as f:
        fields = [f.name for f in dataclasses.fields(rows[0])]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)


DEDUP_MODES = ("dedup-config", "scheduler", "deduplicate", "deduplicate-broadcast")
# Memory readings are process RSS sampled every 0.1 s: a few MB of noise over
# thousands of chunks.  "No worse" allows this much per chunk above scatter.
NOISE_KB_PER_CHUNK = 2.0


def comparable(cells: Sequence[Cell]) -> dict[tuple[str, str], tuple[int, dict[str, Cell]]]:
    """(collection, size) -> (chunk count, mode -> cell): the largest count every mode has a growth for.

    Each growth is over the interval ending at that count, so all modes are
    compared over the same chunks (plain may have skipped the largest count).
    """
    by_pair: dict[tuple[str, str], dict[int, dict[str, Cell]]] = {}
    for c in cells:
        if c.growth_kb_per_chunk is not None:
            by_pair.setdefault((c.collection, c.size), {}).setdefault(c.chunks, {})[c.mode] = c
    out = {}
    for pair, by_count in by_pair.items():
        modes = {m for cells_at in by_count.values() for m in cells_at}
        common = [n for n, cells_at in by_count.items() if set(cells_at) == modes]
        if common:
            out[pair] = (max(common), by_count[max(common)])
    return out


def _applies(mode: str, collection: str) -> bool:
    # the config route has no hook for dask-expr DataFrames and array-expr: plain dask there
    return mode in DEDUP_MODES and not (mode == "dedup-config" and collection in NO_CONFIG_HOOK)


def targets_markdown(cells: Sequence[Cell], overhead_rows: Sequence[overhead.Row]) -> str:
    """The issue's targets, each with the measured figures and a verdict."""
    table = comparable(cells)
    pairs = sorted(table, key=lambda p: (COLLECTIONS.index(p[0]), list(SIZES).index(p[1])))
    modes = [m for m in MODES if any(m in cells_at for _, cells_at in table.values())]
    lines = [
        "Memory growth per extra chunk (KB), every mode over the same chunks (up to the count shown):",
        "",
        "| collection | object | chunks | " + " | ".join(modes) + " | plain / dedup | dedup <= scatter |",
        "|---|---|---|" + "---|" * (len(modes) + 2),
    ]
    for col, size in pairs:
        count, at = table[(col, size)]
        growth = {m: c.growth_kb_per_chunk for m, c in at.items()}
        dedup = {m: g for m, g in growth.items() if _applies(m, col)}
        scatter = growth.get("scatter-broadcast")
        ratio = growth["plain"] / max(max(dedup.values()), 1.0) if "plain" in growth and dedup else None
        no_worse = (
            all(g <= scatter + max(NOISE_KB_PER_CHUNK, 0.1 * abs(scatter)) for g in dedup.values())
            if scatter is not None and dedup else None
        )
        shown = ["n/a (no hook)" if m in DEDUP_MODES and not _applies(m, col) else f"{growth[m]:.1f}" if m in growth else "" for m in modes]
        lines.append(
            f"| {col} | {size} | {count} | " + " | ".join(shown)
            + f" | {'' if ratio is None else f'{ratio:.1f}x'} | {'' if no_worse is None else 'yes' if no_worse else 'NO'} |"
        )
    lines += ["", "Persist wall time (s) of the chunks added up to that count:", "",
              "| collection | object | chunks | plain | " + " | ".join(DEDUP_MODES) + " | dedup <= plain |",
              "|---|---|---|---|" + "---|" * (len(DEDUP_MODES) + 1)]
    for col, size in pairs:
        count, at = table[(col, size)]
        if "plain" not in at:
            continue
        plain_s = at["plain"].persist_s
        times = {m: at[m].persist_s for m in DEDUP_MODES if m in at}
        applicable = [t for m, t in times.items() if _applies(m, col)]
        verdict = "yes" if all(t <= plain_s * 1.05 + 0.05 for t in applicable) else "NO"
        lines.append(
            f"| {col} | {size} | {count} | {plain_s:.2f} | "
            + " | ".join(("n/a" if not _applies(m, col) else f"{times[m]:.2f}") if m in times else "" for m in DEDUP_MODES)
            + f" | {verdict} |"
        )
    skipped = [(m, c) for (m, c) in UNSUPPORTED if any(x.collection == c for x in cells) and any(x.mode == m for x in cells)]
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {m} x {c}: {UNSUPPORTED[m, c]}" for m, c in skipped]
    if overhead_rows:
        lines += ["", "Pass overhead on the largest graph, against dask's own optimize:", ""]
    for scenario, limit in (("none", 0.05), ("shared", 0.10), ("medium", 0.05)):  # issues 11 and 21
        rows = [r for r in overhead_rows if r.scenario == scenario]
        if rows:
            r = max(rows, key=lambda r: r.tasks)
            verdict = "met" if r.overhead <= limit else "MISSED"
            lines.append(f"- {scenario}, {r.tasks} tasks: {r.overhead:.1%} (target {limit:.0%}): {verdict}")
    return "\n".join(lines)


def cells_markdown(cells: Sequence[Cell]) -> str:
    lines = [
        "| mode | collection | object | chunks | memory (MB) | peak (MB) | growth/chunk (KB) | persist (s) | graph sent (KB) | task payload (KB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c.note:
            lines.append(f"| {c.mode} | {c.collection} | {c.size} | {c.chunks} | {c.note} ||||||")
            continue
        growth = "" if c.growth_kb_per_chunk is None else f"{c.growth_kb_per_chunk:.1f}"
        lines.append(
            f"| {c.mode} | {c.collection} | {c.size} | {c.chunks} | {c.memory_mb:.0f} | {c.peak_mb:.0f} | "
            f"{growth} | {c.persist_s:.2f} | {c.graph_sent_kb:.0f} | {c.task_payload_kb:.0f} |"
        )
    return "\n".join(lines)


def plot(cells: Sequence[Cell], sampler: MemorySampler, overhead_rows: Sequence[overhead.Row], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = "250KB" if any(c.size == "250KB" for c in cells) else cells[0].size
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5))
    for mode in dict.fromkeys(c.mode for c in cells):
        labels = [f"{mode}/array/{size}/{c.chunks}" for c in cells if c.mode == mode and c.collection == "array" and c.size == size]
        samples = [point for label in labels for point in sampler.samples.get(label, [])]
        if samples:
            start = samples[0][0]
            ax.plot([t - start for t, _ in samples], [v / 2**20 for _, v in samples], label=mode)
    ax.set(xlabel="seconds since the first persist (sampled while persisting and settling)",
           ylabel="cluster memory (MB)", title=f"Memory over time, map_blocks, {size} object")
    ax.legend()
    paths.append(out / "memory_over_time.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(9, 5))
    for mode in dict.fromkeys(c.mode for c in cells):
        points = [(c.chunks, c.memory_mb) for c in cells if c.mode == mode and c.collection == "array" and c.size == size and not c.note]
        if points:
            ax.plot(*zip(*points), marker="o", label=mode)
    ax.set(xlabel="chunks", ylabel="cluster memory after persist (MB)", title=f"Memory against chunk count, map_blocks, {size} object")
    ax.legend()
    paths.append(out / "memory_vs_chunks.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")

    if overhead_rows:  # the second part may be skipped (--no-overhead)
        fig, ax = plt.subplots(figsize=(9, 5))
        for scenario in overhead.SCENARIOS:
            points = [(r.tasks, 100 * r.overhead) for r in overhead_rows if r.scenario == scenario]
            ax.plot(*zip(*points), marker="o", label=scenario)
        ax.set(xscale="log", xlabel="tasks", ylabel="pass time / dask optimize time (%)", title="Pass overhead against graph size")
        ax.legend()
        paths.append(out / "pass_overhead.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close("all")
    return paths


def run(plan: Plan, out: Path, progress: Callable[[str], None]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cells, sampler = run_cells(plan, progress, lambda cells: write_csv(out / "cells.csv", cells))
    check_results(cells)
    overhead_rows = []
    for tasks in plan.overhead_tasks:
        for scenario in overhead.SCENARIOS:
            overhead_rows.append(overhead.measure(scenario, tasks, repeat=plan.overhead_repeat))
            progress(f"overhead {scenario:9} {tasks:7} tasks: {overhead_rows[-1].overhead:.1%}")
    write_csv(out / "cells.csv", cells)
    if overhead_rows:
        write_csv(out / "overhead.csv", overhead_rows)
    with (out / "memory_samples.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "time", "cluster_memory_bytes"])
        writer.writerows((label, t, v) for label, series in sampler.samples.items() for t, v in series)
    plot(cells, sampler, overhead_rows, out)
    report = out / "results.md"
    report.write_text(
        f"# dedupgraph bench\n\n{environment()}\n\n## Targets\n\n{targets_markdown(cells, overhead_rows)}\n\n"
        f"## Cells\n\n{cells_markdown(cells)}\n\n"
        f"## Pass overhead\n\n{overhead.markdown(overhead_rows)}\n"
    )
    if plan.host_memory is not None:  # its own files: host_memory.csv, .md, host_memory_vs_workers.png
        section = plan.host_memory.run(out, progress)
        with report.open("a") as f:
            f.write(f"\n## One copy per host: share=\"host\"\n\n{section}")
    if plan.repeat is not None:  # its own files: repeat.csv, repeat.md, repeat.png
        section = plan.repeat.run(out, progress)
        with report.open("a") as f:
            f.write(f"\n## The same object, computation after computation\n\n{section}\n")
    return report


def environment() -> str:
    import platform

    import distributed

    return (
        f"Python {platform.python_version()}, dask {dask.__version__}, distributed {distributed.__version__}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, dedupgraph {dedupgraph.__version__}; "
        f"{platform.machine()}, LocalCluster of 2 worker processes x 1 thread."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dedupgraph.benchmarks.suite``: the ``dedupgraph bench`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--cells-only"]:  # the child process of cells_in_child
        _cells_only(Path(args[1]))
        return
    # the command line is the CLI's, which imports this module: run it, do not import it
    raise SystemExit(subprocess.call([sys.executable, "-m", "dedupgraph", "bench", *args]))


if __name__ == "__main__":
    main()
