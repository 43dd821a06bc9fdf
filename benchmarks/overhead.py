"""What the config route adds to dask's own array optimization, and the memory the pass holds.

    python -m dedupgraph.benchmarks.overhead                        # ~60,000 tasks
    python -m dedupgraph.benchmarks.overhead --tasks 10000 200000 --repeat 5
    python -m dedupgraph.benchmarks.overhead --graph issue --tasks 60000 --repeat 7
    python -m dedupgraph.benchmarks.overhead --memory               # 1,000,000 tasks
    python -m dedupgraph.benchmarks.overhead --memory --tasks 10000 --distinct
    python -m dedupgraph.benchmarks.overhead --client --tasks 60000 --repeat 7

The default graph is ``(zeros.map_blocks(f, obj) + 1).sum()`` over
``chunks=(1, 10)``, sized so that the unoptimized graph has about
``--tasks`` tasks, in three scenarios:

- ``none``: ``obj`` is a small int, nothing to hoist;
- ``shared``: ``obj`` holds a 30,000-row Series (~241 KB pickled), one object
  shared by every ``map_blocks`` task;
- ``distinct``: every group of 10 chunks gets its own ~100 KB numpy array (the
  array is built per group and concatenated), so there are tasks/30 distinct
  medium objects to fingerprint and hoist;
- ``medium``: ``--tasks`` tasks that each carry their own ~20 KB object, in
  turn a numpy array, ``bytes`` and a pandas Series, nothing repeated (then ``+ 1``,
  fused with them): nothing to hoist, and every object above ``floor-bytes``
  (issue 21's worst case for a low floor).

``--graph issue`` is issue 11's example instead,
``(ones((n, 4), chunks=(1, 4)).map_blocks(f, obj) + 1).sum()``, sized to
about ``--tasks`` tasks *after* fusion (``none`` and ``shared`` only).

Two measures, both in CPU time (``time.process_time``: other processes on a
shared machine do not count) with ``gc.collect()`` before each timing:

- ``added``, the one judged against the targets (issue 11: at most +5% with
  nothing to hoist, +10% with one shared object): ``--repeat`` times, the
  two modes interleaved (which goes first alternates), each on a freshly
  built collection (layers cache their materialization), dask's
  ``dask.array.optimization.optimize`` against the config route's whole
  call (``Deduplicator(base=optimize)``, what ``array_optimize=dedupgraph.dedup``
  runs); the median of each mode compared (``added (medians)``), and the
  median of the ratios of adjacent pairs (``added (pairs)``).  On a loaded
  machine one run can be slowed against the next by 10% or more: the
  steadiest figure is ``route's own work, in-call``, the CPU time of the
  route's call beyond the dask optimize inside it, over that optimize;
- the dedup stage alone (``dedupgraph.core.pipeline.deduplicate_graph``) on dask's
  optimized output, best of ``--repeat``, over dask's best: what the walk
  and the rewrite cost, without the shortcut that skips graphs whose layers
  hold nothing large.

``--memory`` measures memory instead (``tracemalloc``): a graph of ``--tasks``
tasks (default 1,000,000) that all carry one 100 KB object (with
``--distinct``, equal but distinct copies of it, each pickled once), what it
takes, the peak the pass adds beyond it while it runs, and what the new graph
keeps after it (the rewritten tasks).

``--client`` measures the client side of reuse across computations instead
(``dedupgraph.routes.distributed.uploads``): the CPU time to pickle the
expression of a ``delayed`` graph of ``--tasks`` tasks and of the default
graph (``shared``) as distributed does (``serialize(to_serialize(expr))``)
against ``pickle_sparing``, interleaved, medians of ``--repeat``: with a kept
object of a type the graph does not carry (what every graph pays while the
scheduler keeps something for the client), and with the graph's own shared
object kept (fingerprinted once, then left out).
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask._task_spec import Task
from dask.array.optimization import optimize

from .seed import Mapper
from dedupgraph.core.pipeline import deduplicate_graph, task_graph
from dedupgraph.routes.config import Deduplicator
from dedupgraph.settings import Settings

SCENARIOS = ("none", "shared", "distinct", "medium")
GRAPHS = ("zeros", "issue")
GROUP = 10  # chunks sharing one object in the "distinct" scenario


def add_obj(block: np.ndarray, obj: Any) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return block + obj[0]
    if isinstance(obj, Mapper):
        return block + len(obj.s) % 7
    return block + obj


MEDIUM_BYTES = 20_000


def medium_objects(count: int) -> list[Any]:
    """``count`` distinct objects of about ``MEDIUM_BYTES`` pickled: numpy arrays, ``bytes`` and pandas Series in turn."""
    import pandas as pd

    rng = np.random.default_rng(0)
    kinds = (
        lambda i: rng.random(MEDIUM_BYTES // 8),
        lambda i: rng.bytes(MEDIUM_BYTES),
        lambda i: pd.Series(rng.random(MEDIUM_BYTES // 8 - 50)),
    )
    return [kinds[i % 3](i) for i in range(count)]


def first_row(obj: Any) -> np.ndarray:
    return np.zeros((1, 1))


def each_its_own(tasks: int) -> da.Array:
    """``tasks`` tasks that each carry their own medium object, then ``+ 1``."""
    from dask._task_spec import Task
    from dask.highlevelgraph import HighLevelGraph

    name = f"each-its-own-{tasks}"
    dsk = {(name, i, 0): Task((name, i, 0), first_row, obj) for i, obj in enumerate(medium_objects(tasks))}
    carried = da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=((1,) * tasks, (1,)), dtype="f8")
    return carried + 1


def build(scenario: str, tasks: int) -> da.Array:
    """The collection for ``scenario`` with about ``tasks`` tasks before optimization."""
    if scenario == "medium":
        return each_its_own(tasks)
    rows = max(GROUP, tasks // 5)  # zeros, map_blocks, +1, and a sum tree of ~2 tasks a chunk
    if scenario == "distinct":
        parts = [
            da.zeros((GROUP, 10), chunks=(1, 10)).map_blocks(add_obj, np.full(12_500, g, dtype="f8"))
            for g in range(rows // GROUP)
        ]
        return (da.concatenate(parts) + 1).sum()
    obj: Any = {"none": 1, "shared": Mapper()}[scenario]
    return (da.zeros((rows, 10), chunks=(1, 10)).map_blocks(add_obj, obj) + 1).sum()


def build_issue(scenario: str, tasks: int) -> da.Array:
    """Issue 11's example with about ``tasks`` tasks after fusion: a fused task a chunk, and the sum's tree."""
    if scenario not in ("none", "shared"):
        raise ValueError(f"the issue's example has the scenarios none and shared, not {scenario!r}")
    obj: Any = {"none": 1, "shared": Mapper()}[scenario]
    return (da.ones((max(2, tasks // 2), 4), chunks=(1, 4)).map_blocks(add_obj, obj) + 1).sum()


@dataclass(frozen=True)
class Row:
    scenario: str
    tasks: int  #: before optimization
    dask_s: float  #: best CPU time of dask's optimize
    pass_s: float  #: best CPU time of the dedup stage alone, on dask's output
    hoisted: int
    dask_median_s: float = 0.0  #: median CPU time of dask's optimize, interleaved with the next
    route_median_s: float = 0.0  #: median CPU time of the config route's whole call
    graph: str = "zeros"
    optimized_tasks: int = 0  #: after dask's optimization (fusion)
    #: median, over the route's calls, of its own CPU time over that of dask's optimize
    #: inside the same call: immune to what other processes do to one run against the next
    own_share: float = 0.0
    #: median of route / dask over the interleaved pairs (adjacent runs), minus one
    paired: float = 0.0

    @property
    def stage_overhead(self) -> float:
        """The dedup stage alone over dask's optimize (both best of their runs)."""
        return self.pass_s / self.dask_s

    @property
    def overhead(self) -> float:
        """What the config route adds to dask's optimize: medians, interleaved (the stage's if not timed)."""
        if self.route_median_s and self.dask_median_s:
            return self.route_median_s / self.dask_median_s - 1
        return self.stage_overhead


def _best(runs: int, once: Callable[[], float]) -> float:
    return min(once() for _ in range(runs))


def measure(scenario: str, tasks: int, repeat: int = 3, graph: str = "zeros") -> Row:
    """Dask's optimize and the config route interleaved, then the dedup stage alone (see the module doc)."""
    make = build_issue if graph == "issue" else build
    inside: list[float] = []  # CPU time of dask's optimize within each of the route's calls

    @functools.wraps(optimize)  # the same name: the route still knows it for dask's own
    def timed_optimize(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return optimize(dsk, keys, **kwargs)
        finally:
            inside.append(time.process_time() - start)

    route = Deduplicator(base=timed_optimize)  # what array_optimize=dedupgraph.dedup calls
    shares: list[float] = []
    ntasks = len(make(scenario, tasks).__dask_graph__())
    times: dict[str, list[float]] = {"dask": [], "route": []}
    optimized: dict[str, Any] = {}
    hoisted = 0
    for index in range(repeat):
        # alternate which mode goes first: the process warms up as it goes
        for mode in ("dask", "route") if index % 2 == 0 else ("route", "dask"):
            fresh = make(scenario, tasks)  # layers cache their materialization
            dsk, keys = fresh.__dask_graph__(), fresh.__dask_keys__()
            gc.collect()
            start = time.process_time()
            out = optimize(dsk, keys) if mode == "dask" else route(dsk, keys)
            times[mode].append(time.process_time() - start)
            if mode == "route":  # the route's own work over dask's, within the same call
                shares.append((times[mode][-1] - inside[-1]) / inside[-1])
            if mode == "dask":
                optimized["graph"] = out
            else:
                hoisted = sum(1 for k in out if isinstance(k, str) and k.startswith("dedup-"))
            del out, dsk, fresh
    graph_ = task_graph(optimized.pop("graph"))
    noptimized = len(graph_)

    def pass_once() -> float:
        gc.collect()
        start = time.process_time()
        deduplicate_graph(graph_, Settings())
        return time.process_time() - start

    pass_s = _best(repeat, pass_once)
    median = statistics.median
    return Row(
        scenario, ntasks, min(times["dask"]), pass_s, hoisted,
        median(times["dask"]), median(times["route"]), graph, noptimized,
        median(shares), median(r / d for r, d in zip(times["route"], times["dask"])) - 1,
    )


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | tasks (optimized) | dask optimize, CPU (s) | config route, CPU (s) | added (medians) "
        "| added (pairs) | route's own work, in-call | dedup stage alone (s) | stage / dask (best) | hoisted keys | graph |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.tasks} ({r.optimized_tasks}) | {r.dask_median_s:.3f} | {r.route_median_s:.3f} | "
            f"{r.overhead:+.1%} | {r.paired:+.1%} | {r.own_share:+.1%} | {r.pass_s:.3f} | {r.stage_overhead:.1%} "
            f"| {r.hoisted} | {r.graph} |"
        )
    return "\n".join(lines)


PAYLOAD = 100_000  # bytes of the object every task of the --memory graph carries


def _len_plus(obj: bytes, i: int) -> int:
    return len(obj) + i


def pass_memory(tasks: int, distinct: bool) -> dict[str, float]:
    """The ``--memory`` measurement: the graph's size, the pass's peak beyond it, what the new graph keeps."""
    tracemalloc.start()
    shared = bytearray(PAYLOAD)
    graph = {
        # distinct copies as bytes: immutable, so the default merge-equal lets them share one key
        ("t", i): Task(("t", i), _len_plus, bytes(shared) if distinct else shared, i)
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


def _inc(x: int, i: int) -> int:
    return x + i


def client_pickling(tasks: int, repeat: int) -> list[dict[str, Any]]:
    """The ``--client`` measurement: one row per graph, CPU seconds per way of pickling it (medians)."""
    import dask
    from dask.base import collections_to_expr
    from distributed.protocol import serialize, to_serialize

    from dedupgraph.core.fingerprint import content_fingerprint
    from dedupgraph.core.plan import hoisted_key
    from dedupgraph.routes.distributed.uploads import outline, pickle_sparing

    mapper = Mapper()
    graphs = {
        f"delayed, {tasks} tasks": collections_to_expr([dask.delayed(sum)([dask.delayed(_inc)(i, i) for i in range(tasks)])]),
        f"array, {tasks} tasks, one shared Mapper": collections_to_expr([build("shared", tasks)]),
    }
    absent = {("Absent", ""): {"dedup-Absent-" + "0" * 32}}
    own = {("Mapper", outline(mapper)): {hoisted_key(content_fingerprint(mapper))}}
    ways: dict[str, Callable[[Any], Any]] = {
        "distributed": lambda expr: serialize(to_serialize(expr), on_error="raise"),
        "sparing, kept type absent": lambda expr: pickle_sparing(expr, absent),
        "sparing, own object kept": lambda expr: pickle_sparing(expr, own),
    }
    rows = []
    for name, expr in graphs.items():
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(repeat):
            for way, pickle_it in ways.items():
                gc.collect()
                started = time.process_time()
                pickle_it(expr)
                times[way].append(time.process_time() - started)
        rows.append({"graph": name, **{way: statistics.median(t) for way, t in times.items()}})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=None, help="default: 60000; with --memory, 1000000")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=None)
    parser.add_argument("--graph", choices=GRAPHS, default="zeros")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="the memory the pass holds, not its time")
    parser.add_argument("--distinct", action="store_true", help="with --memory: equal but distinct objects in every task")
    parser.add_argument("--client", action="store_true", help="the client's pickling while the scheduler keeps objects")
    args = parser.parse_args(argv)
    if args.client:
        print("| graph | distributed (s) | sparing, kept type absent (s) | sparing, own object kept (s) |")
        print("|---|---|---|---|")
        for n in args.tasks or [60_000]:
            for r in client_pickling(n, args.repeat):
                print(
                    f"| {r['graph']} | {r['distributed']:.3f} | {r['sparing, kept type absent']:.3f} | "
                    f"{r['sparing, own object kept']:.3f} |"
                )
        return
    if args.memory:
        print("| tasks | graph (MB) | pass peak beyond the graph (MB) | new tasks kept (MB) | hoisted keys |")
        print("|---|---|---|---|---|")
        for n in args.tasks or [1_000_000]:
            r = pass_memory(n, args.distinct)
            print(
                f"| {r['tasks']} | {r['graph_mb']:.0f} | {r['pass_peak_extra_mb']:.0f} | "
                f"{r['kept_after_mb']:.0f} | {r['hoisted']} |"
            )
        return
    args.tasks = args.tasks or [60_000]
    scenarios = args.scenarios or (["none", "shared"] if args.graph == "issue" else list(SCENARIOS))
    rows = []
    for n in args.tasks:
        for s in scenarios:
            rows.append(measure(s, n, args.repeat, args.graph))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
