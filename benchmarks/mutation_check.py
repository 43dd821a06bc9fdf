"""What ``check-mutation`` costs: the seed scenario computed with the check off and on.

    python -m dedupgraph.benchmarks.mutation_check                    # 2000 chunks, 5 runs each
    python -m dedupgraph.benchmarks.mutation_check --chunks 4000 --repeat 7
    python -m dedupgraph.benchmarks.mutation_check --quick

The seed scenario's graph (``benchmarks/seed.py``): ``Mapper(pd.Series(range(30000)))``
passed to ``da.zeros((n, 10), chunks=(1, 10)).map_blocks(apply_mapper, mapper)``,
with the pass on (``dedupgraph.enable()``), in two places:

- ``threads``: ``compute`` on the threaded scheduler, in this process;
- ``cluster``: ``persist`` and ``wait`` on a ``LocalCluster`` of 2 worker
  processes x 1 thread (the seed's), the pass on the scheduler.

Each run builds a fresh collection; ``off`` and ``on`` alternate, and which
goes first alternates too, so that a machine busy with other work slows
both alike.  Wall-clock time (the work happens in the workers), median of
``--repeat`` runs each.  The check's own price per task is timed apart:
one ``dedupgraph.core.runtime.digest`` of the seed's Mapper (a task that
receives it takes two), and the results of both modes are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client, wait

import dedupgraph
from dedupgraph.core.runtime import digest

from .seed import SERIES_ROWS, Mapper, apply_mapper, local_cluster

PLACES = ("threads", "cluster")


@dataclass(frozen=True)
class Row:
    place: str
    chunks: int
    off_s: float  #: median wall time, check off
    on_s: float  #: median wall time, check on
    checked: int  #: tasks that check the Mapper, with the check on

    @property
    def added(self) -> float:
        return self.on_s / self.off_s - 1


def seed_array(chunks: int, mapper: Mapper) -> da.Array:
    zeros = da.zeros((chunks, 10), chunks=(1, 10))
    return zeros.map_blocks(apply_mapper, mapper, meta=np.array((), dtype=zeros.dtype))


def checked_tasks(x: da.Array) -> int:
    """How many tasks of ``x``'s optimized graph, with the check on, check what they receive (in their fused inner tasks)."""
    from dask._task_spec import _execute_subgraph

    from dedupgraph.core.runtime import call_guarded

    with dedupgraph.enable(check_mutation=True):
        (optimized,) = dask.optimize(x)
    return sum(
        1
        for node in dict(optimized.__dask_graph__()).values()
        if getattr(node, "func", None) is _execute_subgraph
        and any(getattr(inner, "func", None) is call_guarded for inner in node.args[0].values())
    )


def digest_s(mapper: Mapper, repeat: int = 200) -> float:
    """Seconds one digest of ``mapper`` takes (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        digest(mapper)
        best = min(best, time.perf_counter() - start)
    return best


def measure(place: str, chunks: int, repeat: int, client: Client | None = None, rows: int = SERIES_ROWS) -> Row:
    """Median wall time of the seed scenario at ``place`` with the check off and on."""
    mapper = Mapper(rows)
    run: Callable[[da.Array], tuple[float, Any]] = _computed if place == "threads" else (lambda x: _persisted(x, client))
    times: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, Any] = {}
    for check in (False, True):  # untimed: imports and the workers' first tasks
        with dedupgraph.enable(check_mutation=check):
            run(seed_array(min(chunks, 20), mapper))
    for index in range(repeat):
        for check in (False, True) if index % 2 == 0 else (True, False):
            x = seed_array(chunks, mapper)
            gc.collect()
            with dedupgraph.enable(check_mutation=check):
                seconds, results[check] = run(x)
            times[check].append(seconds)
    if results[False] != results[True]:
        raise AssertionError(f"the check changed the result: {results}")
    return Row(place, chunks, statistics.median(times[False]), statistics.median(times[True]), checked_tasks(seed_array(chunks, mapper)))


def _computed(x: da.Array) -> tuple[float, float]:
    start = time.perf_counter()
    out = x.compute(scheduler="threads")
    return time.perf_counter() - start, float(out.sum())


def _persisted(x: da.Array, client: Client | None) -> tuple[float, float]:
    assert client is not None
    start = time.perf_counter()
    persisted = client.persist(x)
    wait(persisted)
    seconds = time.perf_counter() - start
    return seconds, float(client.compute(persisted.sum()).result())


@contextlib.contextmanager
def _cluster(place: str) -> Iterator[Client | None]:
    if place != "cluster":
        yield None
        return
    with dedupgraph.enable():  # LocalClusters started now run the scheduler route
        with local_cluster() as client:
            yield client


def markdown(rows: Sequence[Row], per_digest_s: float) -> str:
    lines = [
        "| where | chunks | tasks checked | check off (s) | check on (s) | added |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.place} | {r.chunks} | {r.checked} | {r.off_s:.2f} | {r.on_s:.2f} | {r.added:+.0%} |" for r in rows]
    lines.append(f"\none digest of the seed's Mapper: {per_digest_s * 1e6:.0f} us (two per task that receives it)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.mutation_check", description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--places", nargs="+", choices=PLACES, default=list(PLACES))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    chunks, repeat = (40, 1) if args.quick else (args.chunks, args.repeat)
    measured = []
    for place in args.places:
        with _cluster(place) as client:
            measured.append(measure(place, chunks, repeat, client))
        print(markdown(measured[-1:], 0).splitlines()[2], file=sys.stderr, flush=True)
    print(markdown(measured, digest_s(Mapper())))


if __name__ == "__main__":
    main()
