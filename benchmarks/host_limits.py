"""Workers whose memory limit is below the shared object: pauses, spills, restarts and wall time.

    python -m dedupgraph.benchmarks.host_limits                     # 400 MB; 2 and 4 workers; 3 rounds
    python -m dedupgraph.benchmarks.host_limits --workers 2 --rounds 8 --modes "host, tight" "host, ample"

A ``Model`` of ``--mb`` MB (numeric pandas and numpy data, as in
``host_memory``) is passed to ``map_blocks`` over 4 chunks per worker, each task
reading every byte of it, and computed on a fresh ``LocalCluster`` of N worker
processes x 1 thread, per run:

- ``host, tight``: ``share="host"``, each worker's ``memory_limit`` 1.2 times
  the object (below the 1.25 times of issue 22's target);
- ``host, ample``: ``share="host"``, a limit large enough never to matter
  (4 times the object plus 1 GiB);
- ``process, tight``: ``share="process"``, the tight limit: each worker holds
  its own copy;
- ``plain, tight``: dask without dedupgraph, the tight limit.

For each run: whether it finished, the wall time of the compute, the workers'
pauses (the scheduler's ``worker-status-change`` events), restarts by their
nannies (``worker-restart-memory`` events), what the workers spilled, and
dedupgraph's files left in the segment directory once the cluster closed.
The modes of a round run in turn, every other round in reverse order; the
table gives medians of the wall times, and the sums of the events.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import dedupgraph

from .host_memory import Model, segment_directory

MiB = 2**20
MODES = ("host, tight", "host, ample", "process, tight", "plain, tight")
TIGHT = 1.2  #: a worker's limit, in objects


def read_all(block: np.ndarray, model: Model) -> np.ndarray:
    """Read every byte of the model: every page of a shared segment is in the worker's RSS."""
    return block + float(model.frame["a"].sum()) + float(model.weights.sum())


@dataclass(frozen=True)
class Run:
    mode: str
    workers: int
    finished: bool
    seconds: float
    pauses: int
    restarts: int
    spilled: int
    left: int


def one_run(mode: str, workers: int, model: Model, timeout: float) -> Run:
    """``mode`` on a fresh cluster: one compute, and what the memory manager did meanwhile."""
    share = mode.split(",")[0]
    limit = int(TIGHT * model.nbytes) if mode.endswith("tight") else 4 * model.nbytes + 1024 * MiB
    with segment_directory() as directory:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Sending large graph": the config route sends the object once
            with LocalCluster(
                n_workers=workers, threads_per_worker=1, memory_limit=limit, dashboard_address=None,
                silence_logs=logging.CRITICAL,
            ) as cluster, Client(cluster) as client:
                arr = da.zeros((4 * workers, 4), chunks=(1, 4)).map_blocks(read_all, model, meta=np.array((), dtype="f8"))
                start = time.perf_counter()
                with dedupgraph.enable(share=share) if share != "plain" else contextlib.nullcontext():
                    future = client.compute(arr)
                finished = True
                try:
                    future.result(timeout=timeout)
                except Exception:  # noqa: BLE001  (KilledWorker, a timeout: what plain dask would give)
                    finished = False
                seconds = time.perf_counter() - start
                events = client.get_events()
                pauses = sum(
                    1 for msgs in events.values() for _, m in msgs
                    if isinstance(m, dict) and m.get("action") == "worker-status-change" and m.get("status") == "paused"
                )
                restarts = len(events.get("worker-restart-memory", ()))
                spilled = sum(client.run(_spilled).values()) if finished else -1
                del future
        left = sum(1 for p in directory.iterdir() if p.name.startswith("dedupgraph-"))
    return Run(mode, workers, finished, seconds, pauses, restarts, spilled, left)


def _spilled(dask_worker: Any) -> int:
    slow = getattr(dask_worker.data, "slow", None)
    return len(slow) if slow is not None else 0


def run(mb: float, workers: Sequence[int], rounds: int, timeout: float, modes: Sequence[str] = MODES) -> list[Run]:
    model = Model(mb)
    runs = []
    for n in workers:
        for r in range(rounds):
            for mode in modes if r % 2 == 0 else reversed(modes):
                runs.append(one_run(mode, n, model, timeout))
                print(runs[-1], flush=True)
    return runs


def markdown(runs: Sequence[Run], mb: float) -> str:
    lines = [
        f"object {mb:g} MB; tight limit {TIGHT} x the object per worker",
        "",
        "| workers | mode | finished | wall time (s), median | pauses | restarts | keys spilled | files left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r.workers for r in runs}):
        for mode in [m for m in MODES if any(r.mode == m for r in runs)]:
            cell = [r for r in runs if r.workers == n and r.mode == mode]
            done = [r.seconds for r in cell if r.finished]
            lines.append(
                f"| {n} | {mode} | {len(done)} of {len(cell)} | {statistics.median(done) if done else float('nan'):.2f} "
                f"| {sum(r.pauses for r in cell)} | {sum(r.restarts for r in cell)} "
                f"| {sum(max(r.spilled, 0) for r in cell)} | {sum(r.left for r in cell)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.host_limits", description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=400.0, help="the object's size in MB")
    parser.add_argument("--workers", type=int, action="append", help="worker processes (repeatable; default 2 and 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a compute counts as not finished")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE", help=f"of {MODES}")
    args = parser.parse_args(argv)
    runs = run(args.mb, args.workers or [2, 4], args.rounds, args.timeout, args.modes)
    print(markdown(runs, args.mb))


if __name__ == "__main__":
    main()
