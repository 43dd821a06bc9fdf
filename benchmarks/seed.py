"""The seed scenario, before and after, on a local cluster.

    python -m dedupgraph.benchmarks.seed                  # 500 and 4000 chunks (make demo)
    python -m dedupgraph.benchmarks.seed --chunks 400 2400
    python -m dedupgraph.benchmarks.seed --quick

An object holding a 30,000-row pandas Series (~241 KB pickled) is passed to
``map_blocks`` over ``da.zeros((n, 10), chunks=(1, 10))`` and persisted on a
``LocalCluster`` of 2 worker processes with 1 thread each.  Each mode runs on
a fresh cluster: it persists the first chunk count, then a second array with
the remaining chunks while keeping the first, and reads cluster memory with
``distributed.diagnostics.MemorySampler`` after each.  Growth per chunk is the
memory difference over the extra chunks.

Modes: ``plain`` (dask's default: the object embedded in every task),
``scatter`` (the manual fix, ``client.scatter(obj, broadcast=True)``) and
``dedup`` (``dask.config.set(array_optimize=dedupgraph.dedup)``, no code change).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, wait
from distributed.diagnostics import MemorySampler

import dedupgraph

MODES = ("plain", "scatter", "dedup")
SERIES_ROWS = 30_000
SETTLE_S = 2.0  # heartbeats carry process memory to the scheduler about every 0.5 s


class Mapper:
    """The seed's object: a few dozen bytes to ``dask.sizeof``, 241 KB pickled."""

    def __init__(self, rows: int = SERIES_ROWS) -> None:
        self.s = pd.Series(range(rows))


def apply_mapper(block: np.ndarray, mapper: Mapper) -> np.ndarray:
    return block + len(mapper.s) % 7


@dataclass(frozen=True)
class Row:
    mode: str
    chunks: int
    memory_mb: float
    growth_kb_per_chunk: float | None
    persist_s: float
    total: float


@contextlib.contextmanager
def local_cluster(memory_limit: str = "2GiB") -> Iterator[Client]:
    """The benchmarks' cluster: 2 worker processes x 1 thread."""
    # silence_logs: workers log heartbeat errors while a cluster shuts down;
    # they would bury the tables and progress lines
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as cluster, Client(cluster) as client:
        yield client


def measure_mode(mode: str, chunk_counts: Sequence[int], *, rows: int = SERIES_ROWS) -> list[Row]:
    """Persist growing chunk counts in one mode on a fresh cluster; one row per count."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    counts = sorted(chunk_counts)
    mapper = Mapper(rows)
    sampler = MemorySampler()
    rows_out: list[Row] = []
    with local_cluster() as client:
        arg: Any = client.scatter(mapper, broadcast=True) if mode == "scatter" else mapper
        held = []
        previous, previous_memory = 0, None
        for count in counts:
            arr = da.zeros((count - previous, 10), chunks=(1, 10))
            start = time.perf_counter()
            # (array_optimize=None would switch dask's own optimization off)
            with dedupgraph.enable() if mode == "dedup" else contextlib.nullcontext():
                persisted = arr.map_blocks(apply_mapper, arg, meta=arr).persist()
                wait(persisted)
            persist_s = time.perf_counter() - start
            held.append(persisted)
            with sampler.sample(f"{mode}-{count}", client=client, interval=0.1):
                time.sleep(SETTLE_S)
            memory = _settled(sampler, f"{mode}-{count}")
            growth = None if previous_memory is None else (memory - previous_memory) / (count - previous)
            total = float(sum(p.sum() for p in held).compute())
            rows_out.append(Row(mode, count, memory / 2**20, None if growth is None else growth / 1024, persist_s, total))
            previous, previous_memory = count, memory
    return rows_out


def _settled(sampler: MemorySampler, label: str) -> float:
    """Cluster process memory once it settled: the median of the second half of the samples."""
    series = sampler.samples[label]
    values = [v for _, v in series[len(series) // 2 :]]
    return float(statistics.median(values))


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| mode | chunks | cluster memory (MB) | growth per extra chunk (KB) | persist (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        growth = "" if r.growth_kb_per_chunk is None else f"{r.growth_kb_per_chunk:.1f}"
        lines.append(f"| {r.mode} | {r.chunks} | {r.memory_mb:.0f} | {growth} | {r.persist_s:.2f} |")
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    """One line: dedupgraph's growth per chunk against plain dask and the manual fix.

    >>> rows = [Row(m, 2, 0, g, 0, 0) for m, g in (("plain", 250.0), ("scatter", 12.0), ("dedup", 12.5))]
    >>> verdict(rows)
    'dedup: 12.5 KB per extra chunk, 20x below plain (250.0), 104% of manual scatter (12.0)'
    """
    growth = {r.mode: r.growth_kb_per_chunk for r in rows if r.growth_kb_per_chunk is not None}
    if not {"plain", "scatter", "dedup"} <= set(growth):
        return ""
    dedup, plain, scatter = growth["dedup"], growth["plain"], growth["scatter"]
    return (
        f"dedup: {dedup:.1f} KB per extra chunk, {plain / max(dedup, 0.1):.0f}x below plain ({plain:.1f}), "
        f"{dedup / max(scatter, 0.1):.0%} of manual scatter ({scatter:.1f})"
    )


def run(chunk_counts: Sequence[int], rows: int = SERIES_ROWS, modes: Sequence[str] = MODES) -> list[Row]:
    results = [row for mode in modes for row in measure_mode(mode, chunk_counts, rows=rows)]
    totals = {r.chunks: set() for r in results}
    for r in results:
        totals[r.chunks].add(r.total)
    if any(len(t) != 1 for t in totals.values()):
        raise AssertionError(f"modes disagree on the result: {totals}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs=2, default=(500, 4000), metavar=("FIRST", "SECOND"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    chunks, rows = ((20, 60), 3_000) if args.quick else (tuple(args.chunks), SERIES_ROWS)
    if chunks[0] >= chunks[1]:
        parser.error("--chunks: the second count must be larger than the first")
    print(f"seed scenario: Mapper(pd.Series(range({rows}))) passed to map_blocks, chunks {chunks[0]} then {chunks[1]}")
    print("LocalCluster: 2 worker processes x 1 thread; memory from MemorySampler (process)\n")
    results = run(chunks, rows)
    print(markdown(results))
    print("\n" + verdict(results))


if __name__ == "__main__":
    main()
