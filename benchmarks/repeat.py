"""The same large object in computation after computation: what each one costs, per mode.

    python -m dedupgraph.benchmarks.repeat                          # 50 and 200 MB, 20 computations
    python -m dedupgraph.benchmarks.repeat --mb 20 --computations 5 --collections array
    dedupgraph bench --output results/                              # a part of the suite

One object is used by every task of ``--computations`` successive computations, each a
fresh collection of ``--chunks`` tasks (``map_blocks`` over an array,
``map_partitions`` over a DataFrame) reduced to one number on a
``LocalCluster`` of ``--workers`` worker processes x 1 thread.  Two kinds of
object (``--kinds``): ``series``, a ``Mapper`` holding an int64 Series of
``--mb`` megabytes, whose values travel as one out-of-band buffer (cheap to
unpickle); ``python``, a ``Table`` holding a dict of Python ints by string
keys, ``--python-mb`` megabytes pickled, which a worker takes about half a
second per 14 MB to unpickle (a model made of Python objects).  Each mode on
a fresh cluster:

- ``plain``: dask's default;
- ``dedup``: ``dedupgraph.enable(reuse_limit=0)``, the cluster started after
  it (the scheduler route): one copy per computation, nothing kept between;
- ``dedup-reuse``: ``dedupgraph.enable()``: the scheduler keeps the hoisted
  object for the next computation (``reuse-limit``);
- ``scatter-once``: ``client.scatter(obj, broadcast=True)`` once, before the
  first computation, and the future passed to every one: the manual fix.

Per computation: the bytes of the graph the client sent (the frames of its
``update-graph`` message, as distributed counts them for its "Sending large
graph" warning; for ``scatter-once`` the first computation also counts the
object's pickled size, which ``scatter`` sends once), the wall time of
``client.compute(...).result()``, and whether the result is the expected
one.  Per mode: peak cluster memory (``MemorySampler``, the workers'
process memory summed, sampled every 0.5 s).  Results: ``repeat.csv``,
``repeat.md`` and ``repeat.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster
from distributed.diagnostics import MemorySampler

import dedupgraph

from .seed import Mapper

MODES = ("plain", "dedup", "dedup-reuse", "scatter-once")
COLLECTIONS = ("array", "dataframe")
KINDS = ("series", "python")
TASK_SLEEP_S = 0.05  # a little work per task, so that tasks spread over the workers
TABLE_ITEM_BYTES = 14.8  # pickled bytes per entry of a Table's dict


class Table:
    """An object slow to unpickle: a dict of ``rows`` Python ints by string keys."""

    def __init__(self, rows: int) -> None:
        self.d = {f"k{i}": i for i in range(rows)}


def make_object(kind: str, mb: float) -> Mapper | Table:
    if kind == "series":
        return Mapper(rows=int(mb * 2**20 / 8))
    return Table(rows=int(mb * 2**20 / TABLE_ITEM_BYTES))


def last(obj: Mapper | Table) -> int:
    """What the tasks read from the object: its last value."""
    return len(obj.d) - 1 if isinstance(obj, Table) else int(obj.s.iloc[-1])


def block_fn(block: np.ndarray, obj: Mapper | Table) -> np.ndarray:
    time.sleep(TASK_SLEEP_S)
    return block + last(obj)


def frame_fn(part: pd.DataFrame, obj: Mapper | Table) -> pd.DataFrame:
    time.sleep(TASK_SLEEP_S)
    return part.assign(y=part.x + last(obj))


def build(collection: str, chunks: int, arg: Any) -> Any:
    """One computation: ``chunks`` tasks that each use ``arg``, reduced to one number."""
    if collection == "array":
        return da.zeros((chunks, 10), chunks=(1, 10)).map_blocks(block_fn, arg, meta=np.array((), dtype="f8")).sum()
    frame = pd.DataFrame({"x": np.arange(chunks)})
    return dd.from_pandas(frame, npartitions=chunks).map_partitions(frame_fn, arg, meta={"x": "i8", "y": "i8"}).y.sum()


def expected(collection: str, chunks: int, obj: Mapper | Table) -> float:
    value = last(obj)
    return float(chunks * 10 * value) if collection == "array" else float(np.arange(chunks).sum() + chunks * value)


@dataclass(frozen=True)
class Computation:
    mode: str
    collection: str
    kind: str
    object_mb: float
    number: int  #: 1 for the first
    sent_bytes: int  #: what the client sent for it (see the module's doc)
    wall_s: float
    correct: bool


@dataclass(frozen=True)
class Series:
    """One mode's run: its computations and its peak cluster memory."""

    computations: tuple[Computation, ...]
    peak_mb: float


class SentGraphs:
    """Counts the bytes of the ``update-graph`` messages one client sends."""

    def __init__(self, client: Client) -> None:
        self.graphs: list[int] = []  #: the bytes of each, in the order sent
        send = client._send_to_scheduler

        def counted(msg: dict[str, Any]) -> None:
            if msg.get("op") == "update-graph":
                self.graphs.append(sum(memoryview(frame).nbytes for frame in msg["expr_ser"].frames))
            send(msg)

        client._send_to_scheduler = counted  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(self.graphs)


@contextlib.contextmanager
def cluster(mode: str, workers: int) -> Iterator[Client]:
    """A fresh cluster for ``mode``: started after ``enable()`` in the dedup modes, so it runs the scheduler route."""
    switched = (
        dedupgraph.enable(reuse_limit=0) if mode == "dedup"
        else dedupgraph.enable() if mode == "dedup-reuse"
        else contextlib.nullcontext()  # plain and scatter-once: dask as it is
    )
    with switched:
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            memory_limit="5GiB", silence_logs=logging.CRITICAL,
        ) as local, Client(local) as client:
            yield client


def run_series(mode: str, collection: str, kind: str, mb: float, computations: int, chunks: int, workers: int) -> Series:
    mapper = make_object(kind, mb)
    want = expected(collection, chunks, mapper)
    rows = []
    with cluster(mode, workers) as client, warnings.catch_warnings():
        # distributed's "Sending large graph" warning is what this measures, 20 times over
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        sent = SentGraphs(client)
        sampler = MemorySampler()
        with sampler.sample("series", client=client, measure="process", interval=0.5):
            upload = 0
            arg: Any = mapper
            if mode == "scatter-once":
                upload = len(cloudpickle.dumps(mapper, protocol=5))
                arg = client.scatter(mapper, broadcast=True)
            for number in range(1, computations + 1):
                coll = build(collection, chunks, arg)
                gc.collect()
                before, started = sent.total, time.perf_counter()
                value = client.compute(coll).result()
                wall = time.perf_counter() - started
                rows.append(Computation(
                    mode, collection, kind, mb, number, sent.total - before + (upload if number == 1 else 0), wall,
                    bool(np.isclose(float(value), want)),
                ))
                del coll
        peak = max(v for _, v in sampler.samples["series"]) / 2**20
    return Series(tuple(rows), peak)


def run(sizes: Sequence[float], computations: int, chunks: int, workers: int, collections: Sequence[str],
        modes: Sequence[str], progress: Callable[[str], None], kinds: Sequence[str] = ("series",),
        python_mb: float = 20.0) -> list[Series]:
    out = []
    objects = [(kind, mb) for kind in kinds for mb in (sizes if kind == "series" else [python_mb])]
    for collection in collections:
        for kind, mb in objects:
            for mode in modes:
                series = run_series(mode, collection, kind, mb, computations, chunks, workers)
                out.append(series)
                later = series.computations[1:] or series.computations
                progress(
                    f"repeat {collection:9} {kind:6} {mb:6.0f} MB {mode:12}: sent {statistics.median(c.sent_bytes for c in later) / 2**20:9.3f} MB"
                    f" and {statistics.median(c.wall_s for c in later):6.2f} s per later computation, peak {series.peak_mb:7.0f} MB"
                )
    return out


def markdown(all_series: Sequence[Series]) -> str:
    """One row per collection, size and mode: the first computation, the later ones (medians), the peak."""
    lines = [
        "| collection | object | mode | sent, 1st (MB) | sent, later (MB, median) | sent, later / object | "
        "wall, 1st (s) | wall, later (s, median) | peak cluster memory (MB) | results |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for series in all_series:
        first, later = series.computations[0], series.computations[1:] or series.computations
        sent_later = statistics.median(c.sent_bytes for c in later)
        mb = first.object_mb * 2**20
        lines.append(
            f"| {first.collection} | {first.kind}, {first.object_mb:.0f} MB | {first.mode} | {first.sent_bytes / 2**20:.3f} | "
            f"{sent_later / 2**20:.3f} | {sent_later / mb:.2%} | {first.wall_s:.2f} | "
            f"{statistics.median(c.wall_s for c in later):.2f} | {series.peak_mb:.0f} | "
            f"{'all correct' if all(c.correct for c in series.computations) else 'WRONG'} |"
        )
    return "\n".join(lines)


def plot(all_series: Sequence[Series], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s.computations[0].collection, s.computations[0].kind, s.computations[0].object_mb) for s in all_series})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 7), squeeze=False)
    for column, (collection, kind, mb) in enumerate(panels):
        for series in all_series:
            c0 = series.computations[0]
            if (c0.collection, c0.kind, c0.object_mb) != (collection, kind, mb):
                continue
            numbers = [c.number for c in series.computations]
            axes[0][column].plot(numbers, [c.sent_bytes / 2**20 for c in series.computations], marker=".", label=c0.mode)
            axes[1][column].plot(numbers, [c.wall_s for c in series.computations], marker=".", label=c0.mode)
        axes[0][column].set_title(f"{collection}, {kind} object, {mb:.0f} MB")
        axes[0][column].set_ylabel("MB the client sent")
        axes[1][column].set_ylabel("wall time (s)")
        axes[1][column].set_xlabel("computation")
        axes[0][column].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Part:
    """This benchmark as a part of ``dedupgraph bench`` (``suite.Plan.repeat``)."""

    sizes: tuple[float, ...] = (50.0, 200.0)
    computations: int = 20
    chunks: int = 16
    workers: int = 4
    collections: tuple[str, ...] = COLLECTIONS
    modes: tuple[str, ...] = MODES
    kinds: tuple[str, ...] = KINDS
    python_mb: float = 20.0

    def run(self, out: Path, progress: Callable[[str], None]) -> str:
        """Measure, write ``repeat.csv``, ``repeat.md`` and ``repeat.png`` into ``out``; the markdown table."""
        all_series = run(
            self.sizes, self.computations, self.chunks, self.workers, self.collections, self.modes, progress,
            self.kinds, self.python_mb,
        )
        with (out / "repeat.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            names = [field.name for field in dataclasses.fields(Computation)]
            writer.writerow([*names, "peak_cluster_mb"])
            for series in all_series:
                writer.writerows([*dataclasses.astuple(c), f"{series.peak_mb:.1f}"] for c in series.computations)
        table = markdown(all_series)
        (out / "repeat.md").write_text(table + "\n")
        plot(all_series, out / "repeat.png")
        return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.repeat", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[50.0, 200.0], help="series object sizes (MB of Series values)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--python-mb", type=float, default=20.0, help="the python object's pickled size (MB)")
    parser.add_argument("--computations", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=16, help="tasks per computation")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--collections", nargs="+", choices=COLLECTIONS, default=list(COLLECTIONS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--output", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    part = Part(
        tuple(args.mb), args.computations, args.chunks, args.workers, tuple(args.collections), tuple(args.modes),
        tuple(args.kinds), args.python_mb,
    )
    print(part.run(args.output, lambda line: print(line, flush=True)))
    print(f"written to {args.output}/")


if __name__ == "__main__":
    main()
