"""One copy per host: peak host memory of a hoisted object, per sharing mode and worker count.

    python -m dedupgraph.benchmarks.host_memory                  # 200 MB object; 4 workers, then 1, 2, 4, 8
    python -m dedupgraph.benchmarks.host_memory --quick          # 50 MB; 4 workers, then 1, 2, 4
    python -m dedupgraph.benchmarks.host_memory --mb 100 --workers 4 --sweep --output results/

An object (``Model``) holding ``--mb`` MB of numeric pandas and numpy data is
passed to ``map_blocks`` over ``--tasks`` chunks, each task sleeping
``--task-seconds`` so that every worker runs some, and persisted on a fresh
``LocalCluster`` of N worker processes x 1 thread per mode:

- ``host``: ``dedupgraph.enable(share="host")``, the graph-key route;
- ``process``: ``dedupgraph.enable()``, one copy per worker process;
- ``deduplicate-host``: ``dedupgraph.deduplicate(..., share="host", broadcast=True)``;
- ``scatter-broadcast``: ``client.scatter(model, broadcast=True)``, the manual fix;
- ``plain``: dask as it is, the object in every task.

Host memory is the sum over the worker processes of PSS minus their PSS in
shared memory (``Pss`` - ``Pss_Shmem`` of ``/proc/<pid>/smaps_rollup``), plus
the allocated size of dedupgraph's segments: every byte counted once.  It is
sampled every ``SAMPLE_S`` by a process of its own (``pss_sampler``), outside
the workers, while they compute.  "Copies" is (peak - idle) / the object's
buffer bytes; "held" is the same after the persist, while its results (and a
scattered object) are held.  Wall times come from a second phase: on one
cluster, every mode persists then computes a new collection in turn (every
other round in reverse order), ``--rounds`` times, each timing once the
previous collection is released and garbage collected; the medians are
reported, and every round's time.
Segments live in a fresh directory on ``/dev/shm`` (``DEDUPGRAPH_SHM_DIR``),
so other programs' files do not count, and each cell checks that none is
left once its cluster closed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster, wait

import dedupgraph
from dedupgraph.placement import segments

from . import pss_sampler

MODES = ("host", "process", "deduplicate-host", "scatter-broadcast", "plain")
SWEEP_MODES = ("host", "process", "scatter-broadcast", "plain")
SAMPLE_S = 0.02
SETTLE_S = 0.5


class Model:
    """Half numeric pandas columns, half a numpy array: tiny to ``dask.sizeof``, large pickled."""

    def __init__(self, mb: float) -> None:
        rows = int(mb * 2**20 / 2 / 16)
        self.frame = pd.DataFrame({"a": np.arange(rows, dtype="f8"), "b": np.arange(rows, dtype="i8")})
        self.weights = np.linspace(0.0, 1.0, int(mb * 2**20 / 2 / 8))

    @property
    def nbytes(self) -> int:
        return int(self.frame.memory_usage(index=False).sum() + self.weights.nbytes)


def work(block: np.ndarray, model: Model, seconds: float) -> np.ndarray:
    time.sleep(seconds)
    return block + float(model.frame["a"].iloc[-1]) + float(model.weights[-1])


@dataclass(frozen=True)
class Row:
    mode: str
    workers: int
    object_mb: float
    idle_mb: float
    peak_mb: float
    peak_copies: float
    held_copies: float
    persist_s: float  #: the sampled persist (one measurement: see Timing for medians)
    segments_left: int
    result: float


@dataclass(frozen=True)
class Timing:
    """Wall times of one mode, medians of rounds interleaved with the other modes on one cluster."""

    mode: str
    workers: int
    persist_s: float
    compute_s: float
    rounds: int
    persist_runs: tuple[float, ...] = ()  #: every round's time, in order
    compute_runs: tuple[float, ...] = ()


# --- measuring host memory from outside the workers


def host_memory(pids: Sequence[int], directory: Path) -> int:
    """Bytes: the workers' PSS outside shared memory, plus dedupgraph's segments in ``directory``."""
    return pss_sampler.host_memory(pids, str(directory))


class HostMemory:
    """Samples :func:`host_memory` while the block runs, from a process of its own.

    >>> with HostMemory([os.getpid()], Path("/dev/shm"), interval=0.01) as memory:  # doctest: +SKIP
    ...     time.sleep(0.5)
    >>> memory.peak > 0  # doctest: +SKIP
    True

    A thread of this process would be starved of the GIL while the scheduler,
    which a LocalCluster runs here, pickles a large graph: just when memory
    peaks.  Times are ``time.monotonic()``, the same clock in every process.
    """

    def __init__(self, pids: Sequence[int], directory: Path, interval: float = SAMPLE_S) -> None:
        self.pids = list(pids)
        self.directory = directory
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostMemory:
        # run by path: the standard library only, it starts in a blink
        args = [sys.executable, "-I", "-S", pss_sampler.__file__, str(self.directory), str(self.interval), *map(str, self.pids)]
        self._child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        self._child.stdout.readline()  # "ready": sampling has begun
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._child is not None
        out, _ = self._child.communicate("")  # closing its stdin stops it
        self.samples = [(float(t), int(v)) for t, v in (row.split() for row in out.splitlines())]

    @property
    def peak(self) -> int:
        return max(v for _, v in self.samples)

    def since(self, start: float) -> list[int]:
        return [v for t, v in self.samples if t >= start]


# --- one cell: a mode on a fresh cluster of n workers


@contextlib.contextmanager
def segment_directory() -> Iterator[Path]:
    """A fresh directory on /dev/shm for the segments, named by DEDUPGRAPH_SHM_DIR for the workers too."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="bench-host-memory-", dir=base))
    saved = os.environ.get(segments.DIR_VARIABLE)
    os.environ[segments.DIR_VARIABLE] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(segments.DIR_VARIABLE, None)
        else:
            os.environ[segments.DIR_VARIABLE] = saved
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def cluster(workers: int) -> Iterator[Client]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sending large graph": plain dask and the config route send the object
        with LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=0,  # no pausing or spilling: we measure, not limit
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as lc, Client(lc) as client:
            yield client


def collection(mode: str, model: Model, tasks: int, seconds: float, client: Client) -> Any:
    arg: Any = client.scatter(model, broadcast=True) if mode == "scatter-broadcast" else model
    x = da.zeros((tasks, 4), chunks=(1, 4))
    y = x.map_blocks(work, arg, seconds, meta=np.array((), dtype="f8"))
    if mode == "deduplicate-host":
        (y,) = dedupgraph.deduplicate(y, client=client, broadcast=True, share="host")
    return y


def switched(mode: str) -> contextlib.AbstractContextManager[Any]:
    if mode == "host":
        return dedupgraph.enable(share="host")
    if mode == "process":
        return dedupgraph.enable(share="process")
    return contextlib.nullcontext()


def measure(mode: str, workers: int, model: Model, tasks: int, seconds: float) -> Row:
    """``mode`` on a fresh cluster: one persist, host memory sampled while it runs and after."""
    with segment_directory() as directory:
        with cluster(workers) as client:
            client.run(_warm_up)
            pids = list(client.run(os.getpid).values())
            idle = statistics.median(host_memory(pids, directory) for _ in range(10))
            with HostMemory(pids, directory) as memory:
                persisted, coll, persist_s = _persisted(mode, model, tasks, seconds, client)
                settled = time.monotonic() + SETTLE_S / 2
                time.sleep(SETTLE_S)
            held = statistics.median(memory.since(settled))  # the collection (a scattered object) held too
            result = float(persisted.sum().compute())
            del persisted, coll
        left = len(list(directory.iterdir()))
    size = model.nbytes
    return Row(
        mode, workers, size / 2**20, idle / 2**20, memory.peak / 2**20, (memory.peak - idle) / size,
        (held - idle) / size, persist_s, left, result,
    )


def timings(modes: Sequence[str], workers: int, model: Model, tasks: int, seconds: float, rounds: int) -> list[Timing]:
    """Persist, then compute, each of a new collection, every mode in turn, ``rounds`` times, on one cluster.

    Interleaved, so that whatever else the machine does weighs on every mode
    alike; every other round in reverse order, so that no mode always follows
    the same one.  Before each timing the previous collection is gone from the
    scheduler and garbage is collected everywhere.
    """
    persist: dict[str, list[float]] = {m: [] for m in modes}
    compute: dict[str, list[float]] = {m: [] for m in modes}
    with segment_directory(), cluster(workers) as client:
        client.run(_warm_up)
        for round_ in range(rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                _settled(client)
                persisted, coll, persist_s = _persisted(mode, model, tasks, seconds, client)
                persist[mode].append(persist_s)
                del persisted, coll
                _settled(client)
                start = time.perf_counter()
                with switched(mode):
                    client.compute(collection(mode, model, tasks, seconds, client)).result()
                compute[mode].append(time.perf_counter() - start)
    return [
        Timing(
            m, workers, statistics.median(persist[m]), statistics.median(compute[m]), rounds,
            tuple(round(t, 3) for t in persist[m]), tuple(round(t, 3) for t in compute[m]),
        )
        for m in modes
    ]


def _settled(client: Client, timeout: float = 30.0) -> None:
    """Wait until the scheduler holds no task (the previous collection released), then collect garbage.

    The same keys come back in the next timing: a result still held would be reused.
    """
    deadline = time.monotonic() + max(timeout, SETTLE_S)
    time.sleep(SETTLE_S)
    while client.run_on_scheduler(_task_count) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.run(gc.collect)
    gc.collect()


def _task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def _persisted(mode: str, model: Model, tasks: int, seconds: float, client: Client) -> tuple[Any, Any, float]:
    """(persisted collection, the collection, seconds from building it to the persist's end)."""
    start = time.perf_counter()
    with switched(mode):
        coll = collection(mode, model, tasks, seconds, client)
        persisted = client.persist(coll)
        wait(persisted)
    return persisted, coll, time.perf_counter() - start


def _warm_up() -> None:
    # what tasks import on first use, so that it is in the idle baseline
    import dask.array  # noqa: F401
    import pandas  # noqa: F401

    import dedupgraph.placement.host  # noqa: F401


# --- the whole run, and its outputs


def run(
    mb: float,
    workers: int,
    sweep: Sequence[int],
    tasks: int,
    seconds: float,
    modes: Sequence[str] = MODES,
    sweep_modes: Sequence[str] = SWEEP_MODES,
    rounds: int = 3,
    progress: Any = print,
) -> tuple[list[Row], list[Timing]]:
    """Memory of every mode at ``workers`` and of ``sweep_modes`` at each of ``sweep``; wall times at ``workers``."""
    model = Model(mb)
    rows = []
    for n, group in [(workers, modes), *((n, sweep_modes) for n in sweep if n != workers)]:
        for mode in group:
            rows.append(measure(mode, n, model, tasks, seconds))
            progress(line(rows[-1]))
    results = {r.result for r in rows}
    if len(results) != 1:
        raise AssertionError(f"modes disagree on the result: {results}")
    times = timings(modes, workers, model, tasks, seconds, rounds) if rounds else []
    for t in times:
        progress(
            f"{t.mode:18} {t.workers} workers: persist {t.persist_s:5.2f} s, compute {t.compute_s:5.2f} s "
            f"(medians of {t.rounds}; persist {_seconds(t.persist_runs)}, compute {_seconds(t.compute_runs)})"
        )
    return rows, times


def _seconds(runs: Sequence[float]) -> str:
    return " ".join(f"{t:.2f}" for t in runs)


def line(r: Row) -> str:
    return (
        f"{r.mode:18} {r.workers} workers: peak {r.peak_copies:5.2f} copies ({r.peak_mb:7.0f} MB, idle {r.idle_mb:5.0f}), "
        f"held {r.held_copies:5.2f}, persist {r.persist_s:5.2f} s, segments left {r.segments_left}"
    )


def markdown(rows: Sequence[Row], times: Sequence[Timing], workers: int) -> str:
    main = [r for r in rows if r.workers == workers]
    lines = [
        f"Object: {main[0].object_mb:.0f} MB of buffers; LocalCluster of {workers} worker processes x 1 thread.",
        "",
        "| mode | peak host memory above idle (copies) | held after persist (copies) | segments left after close |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.mode} | {r.peak_copies:.2f} | {r.held_copies:.2f} | {r.segments_left} |" for r in main]
    if times:
        lines += [
            "",
            f"Wall time, medians of {times[0].rounds} rounds, every mode in turn on one cluster of {times[0].workers} workers:",
            "",
            "| mode | persist (s) | compute (s) | every persist (s) | every compute (s) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t.mode} | {t.persist_s:.2f} | {t.compute_s:.2f} | {_seconds(t.persist_runs)} | {_seconds(t.compute_runs)} |"
            for t in times
        ]
    counts = sorted({r.workers for r in rows})
    if len(counts) > 1:
        modes = list(dict.fromkeys(r.mode for r in rows if r.workers != workers))
        by = {(r.mode, r.workers): r for r in rows}
        lines += ["", "Peak host memory above idle, in copies, against worker processes:", ""]
        lines += ["| mode | " + " | ".join(f"{n} workers" for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for mode in modes:
            cells = [f"{by[(mode, n)].peak_copies:.2f}" if (mode, n) in by else "" for n in counts]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    counts = sorted({r.workers for r in rows})
    for mode in dict.fromkeys(r.mode for r in rows):
        points = sorted((r.workers, r.peak_copies) for r in rows if r.mode == mode)
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", label=mode)
    ax.set(
        xlabel="worker processes on the host", ylabel="peak host memory above idle (copies of the object)",
        title=f"Peak host memory against worker processes, {rows[0].object_mb:.0f} MB object", xticks=counts,
    )
    ax.set_ylim(bottom=0)
    ax.legend()
    path = out / "host_memory_vs_workers.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write(rows: Sequence[Row], times: Sequence[Timing], workers: int, out: Path) -> Path:
    """``host_memory.csv``, ``host_times.csv``, ``host_memory.md`` and (with a sweep) the plot; the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    for name, records, kind in (("host_memory.csv", rows, Row), ("host_times.csv", times, Timing)):
        with (out / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(kind)])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(r) for r in records)
    if len({r.workers for r in rows}) > 1:
        plot(rows, out)
    report = out / "host_memory.md"
    report.write_text(markdown(rows, times, workers) + "\n")
    return report


@dataclass(frozen=True)
class Part:
    """This benchmark as a part of ``dedupgraph bench`` (``suite.Plan.host_memory``)."""

    mb: float = 200.0
    workers: int = 4
    sweep: tuple[int, ...] = (1, 2, 4, 8)
    sweep_modes: tuple[str, ...] = SWEEP_MODES
    tasks: int = 16
    task_seconds: float = 0.3
    rounds: int = 5

    def run(self, out: Path, progress: Any) -> str:
        """Measure, write the files into ``out``, and return the markdown section."""
        rows, times = run(
            self.mb, self.workers, self.sweep, self.tasks, self.task_seconds,
            sweep_modes=self.sweep_modes, rounds=self.rounds, progress=progress,
        )
        return write(rows, times, self.workers, out).read_text()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.host_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="object size (MB of buffers)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes for the comparison of every mode")
    parser.add_argument("--sweep", type=int, nargs="*", default=None, help="worker counts for the plot (default 1 2 4 8)")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--task-seconds", type=float, default=0.3)
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (persist and compute of every mode); 0: none")
    parser.add_argument("--quick", action="store_true", help="50 MB, sweep 1 2 4")
    parser.add_argument("--output", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    mb, sweep = (50.0, [1, 2, 4]) if args.quick else (args.mb, [1, 2, 4, 8])
    if args.sweep is not None:
        sweep = args.sweep
    rows, times = run(mb, args.workers, sweep, args.tasks, args.task_seconds, modes=args.modes, rounds=args.rounds)
    report = write(rows, times, args.workers, args.output)
    print("\n" + report.read_text())
    print(f"written to {args.output}/", file=sys.stderr)


if __name__ == "__main__":
    main()
