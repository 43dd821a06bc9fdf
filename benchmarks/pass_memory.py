"""Memory the pass holds beyond the graph itself, at its peak.

    python -m dedupgraph.benchmarks.pass_memory                 # 1,000,000 tasks
    python -m dedupgraph.benchmarks.pass_memory --tasks 100000 --distinct

Builds a graph of ``--tasks`` tasks that all carry one 100 KB object (or, with
``--distinct``, equal but distinct copies of it, each pickled once), then
measures with ``tracemalloc``: what the graph takes, the peak the pass adds
while it runs, and what the new graph keeps after it (the rewritten tasks).
"""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import Sequence

from dask._task_spec import Task

from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.settings import Settings

PAYLOAD = 100_000


def _len_plus(obj: bytes, i: int) -> int:
    return len(obj) + i


def measure(tasks: int, distinct: bool) -> dict[str, float]:
    tracemalloc.start()
    shared = bytearray(PAYLOAD)
    graph = {
        ("t", i): Task(("t", i), _len_plus, bytearray(shared) if distinct else shared, i)
        for i in range(tasks)
    }
    graph_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    out = deduplicate_graph(graph, Settings())
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hoisted = sum(1 for k in out if isinstance(k, str))
    del out
    return {
        "tasks": tasks,
        "graph_mb": graph_bytes / 2**20,
        "pass_peak_extra_mb": (peak - graph_bytes) / 2**20,
        "kept_after_mb": (after - graph_bytes) / 2**20,
        "hoisted": hoisted,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.pass_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--distinct", action="store_true", help="equal but distinct objects in every task")
    args = parser.parse_args(argv)
    r = measure(args.tasks, args.distinct)
    print("| tasks | graph (MB) | pass peak beyond the graph (MB) | new tasks kept (MB) | hoisted keys |")
    print("|---|---|---|---|---|")
    print(
        f"| {r['tasks']} | {r['graph_mb']:.0f} | {r['pass_peak_extra_mb']:.0f} | "
        f"{r['kept_after_mb']:.0f} | {r['hoisted']} |"
    )


if __name__ == "__main__":
    main()
