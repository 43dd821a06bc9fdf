"""The measurements behind design choices named in the code, each against the way not taken.

    python -m dedupgraph.benchmarks.design                         # every measurement that needs no cluster
    python -m dedupgraph.benchmarks.design --repeat 5 --cluster    # and the two on a LocalCluster
    python -m dedupgraph.benchmarks.design --only gc --repeat 9
    python -m dedupgraph.benchmarks.design --scale 0.05 --repeat 1 # tiny sizes: a smoke run

Comments in the code point at docs/benchmarks.rst, "Measurements behind
the code", for what a choice saves; this prints those figures again.  Each
measurement runs the two ways interleaved in one process (which goes first
alternates), ``gc.collect()`` before each timing, ``--repeat`` times, and
shows the best and the median of each; times are CPU time
(``time.process_time``: other processes on a shared machine do not count)
unless the row says wall.  ``--scale`` multiplies every size below.

- ``scatter`` (``dedupgraph.placement.scatter``): the message
  ``client.scatter`` writes for a list of 50,000 ints,
  ``distributed.protocol.dumps`` of ``{"data": {key: to_serialize(value)}}``
  (distributed serializes a list item by item, default serializers),
  against the same message carrying the list pickled whole, as the code
  scatters it (``Serialized(*serialize(value, serializers=("pickle",)))``,
  built inside the timing).
- ``gc`` (``dedupgraph.core.pipeline.collection_paused``): the pass,
  ``deduplicate_graph``, on ``ones((20000, 4), chunks=(1, 4)).map_blocks(f, obj)``
  (``obj``: a 241 KB object) optimized by ``dask.array.optimization.optimize``
  and materialized, with the cyclic garbage collector on
  (``collection_paused`` replaced by a ``nullcontext`` here) against as
  shipped.  The graph is built afresh for each timing, after the
  ``gc.collect()`` and right before it: its objects still fill the young
  generations, as when dask has just built them.
- ``subgraphs`` (``dedupgraph.core.transform.walk_leaves``): stage 1's
  walk, with its visit (fingerprint, skip what is small), over every task of
  the 59,999-task array graph of ``scheduler_cost.build("array", "shared", 60000)``,
  with one ``subgraphs`` dict for the whole walk against a fresh one per
  task; the plain walk (``subgraphs=None``) is shown in the notes.
- ``prescan`` (``dedupgraph.core.prescan.nothing_large``): reading the layers
  of that graph's expression (``collections_to_expr([x]).optimize()``, with
  nothing large: ``build("array", "none", 60000)``) against stages 1 and 2
  of the pass (``dedupgraph.core.pipeline.planned``) on its materialized
  tasks, what the route would run without the prescan.
- ``delayed`` (``dedupgraph.routes.materialize``): 3000 ``Delayed`` values
  culled into one graph, dask's way (``collections_to_expr(values).optimize()``,
  its graph materialized, as ``compute`` does) against
  ``dedupgraph.routes.materialize.materialize(values)``, which merges them
  into one layer first.
- ``frames`` (``dedupgraph.routes.frames``): a 3000-partition DataFrame
  (``from_pandas(...).map_partitions(f, obj)``, unfused as a Client
  persists it) deduplicated, then rebuilt by ``dask.dataframe.from_graph``
  against ``renamed_frame``: the tasks of the graph a persist sends
  (``collections_to_expr([df]).optimize().__dask_graph__()``).
- ``frames-persist`` (``--cluster``): the wall time of persisting each of
  those two frames on a ``LocalCluster`` of 2 worker processes x 1 thread,
  each timing once the previous result is released.
- ``startup`` (``dedupgraph_startup``): the wall time of
  ``python -c "import dask, dedupgraph"`` against ``python -c "pass"``
  (what a process pays with the hook as shipped and the variable unset;
  ``import dask`` in the notes), subprocesses without
  ``DASK_DEDUPGRAPH__ENABLED``.
- ``importlib`` (``dedupgraph_startup``): the wall time of
  ``python -c "import importlib.abc"`` against ``python -c "pass"``;
  ``-X importtime``'s cumulative figure for it in the notes.
- ``window`` (``--cluster``; ``dedupgraph.placement.host.WINDOW``): a worker's
  pull of a host-shared 200 MB object (``dedupgraph.enable(share="host")``,
  the graph-key route: the worker that runs the hoisted key pulls the bytes
  from the scheduler), ``WINDOW`` set in the workers to 4 against 8: the wall
  time of the hoisted key's task (the pull, then mapping the segment), from
  the task stream, on a ``LocalCluster`` of 2 worker processes x 1 thread;
  every timing has an object of new content, so that no segment exists yet.

Without ``--cluster`` the two cluster rows say so and show only the figure
the removed comment gave.  That column, "old ad hoc figure", quotes those
comments: measured ad hoc, their commands not kept.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import operator
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.optimization import optimize
from dask.base import collections_to_expr
from dask.core import flatten
from dask.utils import key_split
from distributed.protocol import Serialized, dumps, loads, serialize, to_serialize

import dedupgraph.core.pipeline as pipeline
from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.pipeline import Graph, deduplicate_graph, planned, task_graph
from dedupgraph.core.prescan import nothing_large
from dedupgraph.core.transform import walk_leaves
from dedupgraph.routes.materialize import materialize
from dedupgraph.settings import Settings
from dedupgraph_startup import VARIABLE  # the startup hook's: unset in the subprocesses timed here

from . import scheduler_cost
from .seed import Mapper


@dataclass(frozen=True)
class Figure:
    """One way's runs, in ``unit``."""

    label: str
    runs: tuple[float, ...]
    unit: str  #: "s CPU", "s wall", "ms wall" or "tasks"

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def text(self) -> str:
        """``label: best B, median M unit``; a count, or a single run, alone."""
        if self.unit == "tasks" or len(self.runs) == 1:
            return f"{self.label}: {number(self.median)} {self.unit}"
        return f"{self.label}: best {number(self.best)}, median {number(self.median)} {self.unit}"


@dataclass(frozen=True)
class Row:
    name: str  #: what ``--only`` takes
    module: str  #: where the code names the choice
    measurement: str
    instead: str  #: what the code does instead of the way not taken
    alternative: Figure | None  #: the way not taken; None: not measured
    chosen: Figure | None  #: what the code does
    old: str  #: the figure the removed comment quoted (ad hoc, command not kept)
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        """The way not taken over the code's, medians."""
        if self.alternative is None or self.chosen is None:
            return None
        return self.alternative.median / self.chosen.median


def number(value: float) -> str:
    """A figure with the digits that matter.

    >>> number(6001), number(61.31), number(1.2345), number(0.2345), number(0.00712)
    ('6001', '61.3', '1.23', '0.234', '0.0071')
    """
    if value >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.4f}"


def ratio_text(ratio: float | None) -> str:
    """The ratio as the table shows it; nothing for a row not measured.

    >>> ratio_text(145.3), ratio_text(1.4998), ratio_text(None)
    ('145x', '1.5x', '')
    """
    if ratio is None:
        return ""
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


# --- timing


def interleaved(ways: dict[str, Callable[[], float]], repeat: int) -> dict[str, tuple[float, ...]]:
    """Each way's times, ``repeat`` rounds of one run each, the order reversed every other round."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for index in range(repeat):
        for name in names if index % 2 == 0 else names[::-1]:
            times[name].append(ways[name]())
    return {name: tuple(runs) for name, runs in times.items()}


def cpu(func: Callable[[], Any]) -> float:
    """CPU seconds of ``func()``, after ``gc.collect()``."""
    gc.collect()
    start = time.process_time()
    func()
    return time.process_time() - start


def sized(count: int, scale: float, least: int = 10) -> int:
    return max(least, int(count * scale))


# --- the measurements


def scatter_whole(repeat: int, scale: float) -> Row:
    value = list(range(sized(50_000, scale)))

    def item_by_item() -> list[Any]:  # what client.scatter writes: to_serialize(value) per key
        return dumps({"op": "scatter", "data": {"k": to_serialize(value)}})

    def whole() -> list[Any]:  # the code's: the list pickled whole, then the same message
        pickled = Serialized(*serialize(value, serializers=("pickle",), on_error="raise"))
        return dumps({"op": "scatter", "data": {"k": pickled}})

    for way in (item_by_item, whole):  # the receiver gets the list back either way
        if loads(way())["data"]["k"] != value:
            raise AssertionError(f"{way.__name__}: the list did not come back")
    times = interleaved({"items": lambda: cpu(item_by_item), "whole": lambda: cpu(whole)}, repeat)
    return Row(
        "scatter", "dedupgraph/placement/scatter.py (_whole)",
        f"serializing a list of {len(value):,} ints as client.scatter does (distributed.protocol.dumps)",
        "pickles a list, tuple, set or dict whole before the scatter",
        Figure("item by item", times["items"], "s CPU"),
        Figure("pickled whole", times["whole"], "s CPU"),
        "1.45 s item by item, 0.01 s pickled whole",
    )


@contextlib.contextmanager
def collector_on(ntasks: int) -> Iterator[None]:
    """``collection_paused``'s stand-in: the collector left as it is."""
    yield


def gc_paused(repeat: int, scale: float) -> Row:
    rows = sized(20_000, scale)
    obj = Mapper()
    shipped = pipeline.collection_paused
    sizes: set[tuple[int, int]] = set()

    def rewrite(paused: bool) -> float:
        gc.collect()
        x = da.ones((rows, 4), chunks=(1, 4)).map_blocks(scheduler_cost.add_obj, obj)
        graph = dict(optimize(x.__dask_graph__(), x.__dask_keys__()))
        # no collection between the build and the pass: as right after dask built the graph
        pipeline.collection_paused = shipped if paused else collector_on  # type: ignore[assignment]
        try:
            start = time.process_time()
            out = deduplicate_graph(graph, Settings())
            elapsed = time.process_time() - start
        finally:
            pipeline.collection_paused = shipped  # type: ignore[assignment]
        sizes.add((len(graph), len(out)))
        return elapsed

    times = interleaved({"on": lambda: rewrite(False), "paused": lambda: rewrite(True)}, repeat)
    (ntasks, nout), = sizes
    return Row(
        "gc", "dedupgraph/core/pipeline.py (collection_paused)",
        f"the pass rewriting a freshly built {ntasks:,}-task graph that carries a 241 KB object",
        "pauses the cyclic garbage collector while the pass runs on a large graph",
        Figure("collector on", times["on"], "s CPU"),
        Figure("paused, as shipped", times["paused"], "s CPU"),
        "0.41 s with the collector on, 0.12 s paused",
        f"{nout - ntasks} key hoisted",
    )


def stage_one_walk(graph: Graph, subgraphs: str) -> int:
    """Stage 1's walk over every task (fingerprint each leaf, skip what is small); the leaves visited.

    ``subgraphs``: ``"shared"``, one memo for the whole walk (the code's);
    ``"fresh"``, a new one per task; ``"none"``, the plain walk.
    """
    settings = Settings()
    memo = FingerprintMemo.for_pass(settings)
    judged: set[int] = set()
    visits = 0

    def visit(value: Any, where: str) -> None:
        nonlocal visits
        visits += 1
        fp = memo.fingerprint(value)
        if fp is None or fp.nbytes < settings.smallest_hoisted:
            judged.add(id(value))

    shared: dict[int, Any] = {}
    for node in graph.values():
        walk_leaves(node, visit, judged, shared if subgraphs == "shared" else {} if subgraphs == "fresh" else None)
    return visits


def array_graph(scenario: str, tasks: int) -> tuple[Any, Graph]:
    """``scheduler_cost``'s array collection: its optimized expression, and its materialized tasks."""
    expr = collections_to_expr([scheduler_cost.build("array", scenario, tasks)]).optimize()
    return expr, task_graph(dict(expr.__dask_graph__()))


def subgraphs_walked_once(repeat: int, scale: float) -> Row:
    _, graph = array_graph("shared", sized(60_000, scale, least=40))
    visits: dict[str, set[int]] = {"shared": set(), "fresh": set(), "none": set()}

    def walk(how: str) -> float:
        return cpu(lambda: visits[how].add(stage_one_walk(graph, how)))

    times = interleaved({how: functools.partial(walk, how) for how in ("fresh", "shared", "none")}, repeat)
    if len({n for seen in visits.values() for n in seen}) != 1:
        raise AssertionError(f"the walks disagree on the leaves: {visits}")
    plain = Figure("plain walk (subgraphs=None)", times["none"], "s CPU")
    return Row(
        "subgraphs", "dedupgraph/core/transform.py (walk_leaves)",
        f"stage 1's walk over the {len(graph):,} tasks of an array graph whose fused tasks share inner graphs",
        "walks each shared inner graph once per walk (one subgraphs dict)",
        Figure("a fresh dict per task", times["fresh"], "s CPU"),
        Figure("one dict per walk", times["shared"], "s CPU"),
        "0.29 s a walk per task, 0.21 s walked once (CPU, best of 5)",
        plain.text(),
    )


def prescan_layers(repeat: int, scale: float) -> Row:
    expr, graph = array_graph("none", sized(60_000, scale, least=40))
    settings = Settings()
    answers: set[tuple[bool, bool]] = set()

    def layers() -> None:
        answers.add((True, nothing_large(expr, settings)))

    def tasks() -> None:
        answers.add((False, not planned(graph, settings)[1]))

    times = interleaved({"tasks": lambda: cpu(tasks), "layers": lambda: cpu(layers)}, repeat)
    if answers != {(True, True), (False, True)}:
        raise AssertionError(f"both must find nothing large: {answers}")
    return Row(
        "prescan", "dedupgraph/core/prescan.py (nothing_large)",
        f"ruling out anything large in a {len(graph):,}-task array graph",
        "reads the expression's layers (nothing_large) before materializing",
        Figure("stages 1-2 on the tasks (planned)", times["tasks"], "s CPU"),
        Figure("the layers (nothing_large)", times["layers"], "s CPU"),
        "about 0.45 s walking the tasks, 0.05 s reading the layers (CPU)",
    )


def delayed_values(count: int) -> list[Any]:
    return [dask.delayed(operator.add)(i, 1) for i in range(count)]


def delayed_culled(repeat: int, scale: float) -> Row:
    count = sized(3000, scale)
    keys: list[frozenset[Any]] = []

    def dask_way() -> float:
        values = delayed_values(count)
        return cpu(lambda: keys.append(frozenset(dict(collections_to_expr(values).optimize().__dask_graph__()))))

    def merged() -> float:
        values = delayed_values(count)
        return cpu(lambda: keys.append(frozenset(materialize(values).graph)))

    times = interleaved({"dask": dask_way, "merged": merged}, repeat)
    if {len(k) for k in keys} != {count}:
        raise AssertionError(f"both ways must keep the {count} tasks: {sorted({len(k) for k in keys})}")
    return Row(
        "delayed", "dedupgraph/routes/materialize.py (_delayed_graph)",
        f"culling {count:,} Delayed values into one graph",
        "merges them into one layer, culled in one walk",
        Figure("dask: a layer per value", times["dask"], "s CPU"),
        Figure("materialize: one layer", times["merged"], "s CPU"),
        "3000 values: about 1 s (quadratic)",
    )


def deduplicated_frames(partitions: int) -> tuple[Any, Any]:
    """A frame of ``partitions`` carrying one 241 KB object, deduplicated: (``from_graph``'s, ``renamed_frame``'s)."""
    import dask.dataframe as dd

    from dedupgraph.routes.frames import renamed_frame

    frame = scheduler_cost.build("dataframe", "shared", 2 * partitions)
    done = materialize([frame], fuse=False)  # unfused, as a Client persists it
    optimized = done.optimized[0]
    layer = deduplicate_graph(done.graph, Settings())
    keys = list(flatten(optimized.__dask_keys__()))
    meta, divisions, prefix = optimized._meta, optimized.divisions, key_split(optimized._name)
    aliased = dd.from_graph(dict(layer), meta, divisions, keys, prefix)
    renamed = renamed_frame(layer, meta, divisions, keys, prefix, (optimized._name,))
    return aliased, renamed


def sent_tasks(frame: Any) -> int:
    """The tasks of the graph ``Client.persist`` sends for ``frame``, as the scheduler materializes it."""
    return len(collections_to_expr([frame]).optimize().__dask_graph__())


def frame_tasks(repeat: int, scale: float) -> Row:
    partitions = sized(3000, scale)
    aliased, renamed = deduplicated_frames(partitions)
    return Row(
        "frames", "dedupgraph/routes/frames.py (renamed_frame)",
        f"the tasks a persist sends for a deduplicated {partitions:,}-partition DataFrame",
        "renames the output tasks: no alias task per partition",
        Figure("from_graph", (sent_tasks(aliased),), "tasks"),
        Figure("renamed_frame", (sent_tasks(renamed),), "tasks"),
        "9001 tasks instead of 6001",
    )


def scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def released(client: Any, timeout: float = 60.0) -> None:
    """Wait until the scheduler holds no task (the previous result released), then collect garbage everywhere."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(scheduler_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.run(gc.collect)
    gc.collect()


def warm_up() -> None:
    """In a worker: import what a DataFrame's tasks need."""
    import dask.dataframe  # noqa: F401
    import pandas  # noqa: F401


def frame_persist(repeat: int, scale: float) -> Row:
    from distributed import wait

    from .seed import local_cluster

    partitions = sized(3000, scale)
    frames = dict(zip(("aliased", "renamed"), deduplicated_frames(partitions)))

    with local_cluster() as client:

        def persist(name: str) -> float:
            released(client)
            start = time.perf_counter()
            persisted = client.persist(frames[name])
            wait(persisted)
            elapsed = time.perf_counter() - start
            del persisted
            return elapsed

        client.run(warm_up)  # what the tasks import on first use, outside the timings
        for frame in deduplicated_frames(10):  # the first persist of each kind, untimed
            wait(client.persist(frame))
        times = interleaved({name: functools.partial(persist, name) for name in frames}, repeat)
    return Row(
        "frames-persist", "dedupgraph/routes/frames.py (renamed_frame)",
        f"persisting that {partitions:,}-partition DataFrame on a LocalCluster of 2 processes x 1 thread",
        "renames the output tasks: no alias task per partition",
        Figure("from_graph", times["aliased"], "s wall"),
        Figure("renamed_frame", times["renamed"], "s wall"),
        "21 s instead of 15 s",
    )


def python_env() -> dict[str, str]:
    """This environment without the startup hook's variable."""
    return {k: v for k, v in os.environ.items() if k != VARIABLE}


def wall_ms(args: Sequence[str]) -> float:
    """Milliseconds of wall time of ``python *args`` in a fresh interpreter."""
    gc.collect()
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=python_env(), check=True, capture_output=True, timeout=120)
    return (time.perf_counter() - start) * 1000


def startup_cost(repeat: int, scale: float) -> Row:
    codes = {"both": "import dask, dedupgraph", "dask": "import dask", "pass": "pass"}
    times = interleaved({name: functools.partial(wall_ms, ["-c", code]) for name, code in codes.items()}, repeat)
    both, dask_, bare = (statistics.median(times[name]) for name in ("both", "dask", "pass"))
    plain_dask = Figure('"import dask"', times["dask"], "ms wall")
    return Row(
        "startup", "dedupgraph_startup.py",
        "starting a Python process",
        "the hook imports neither dask nor dedupgraph unless DASK_DEDUPGRAPH__ENABLED is set",
        Figure('"import dask, dedupgraph"', times["both"], "ms wall"),
        Figure('"pass", as shipped', times["pass"], "ms wall"),
        "0.1 s for dask, 0.18 s with dedupgraph",
        f"{plain_dask.text()}; medians: dask adds {number(dask_ - bare)} ms to a start, "
        f"dedupgraph {number(both - dask_)} ms more",
    )


def importtime_ms(module: str) -> float:
    """``-X importtime``'s cumulative milliseconds of importing ``module`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=python_env(), check=True, capture_output=True, text=True, timeout=120,
    )
    for line in reversed(done.stderr.splitlines()):
        found = re.match(r"import time:\s*\d+\s*\|\s*(\d+)\s*\|\s*(\S+)\s*$", line)
        if found and found.group(2) == module:
            return int(found.group(1)) / 1000
    return 0.0  # loaded at start-up already: nothing to pay


def importlib_abc(repeat: int, scale: float) -> Row:
    ways = {"abc": functools.partial(wall_ms, ["-c", "import importlib.abc"]), "pass": functools.partial(wall_ms, ["-c", "pass"])}
    times = interleaved(ways, repeat)
    cumulative = tuple(importtime_ms("importlib.abc") for _ in range(repeat))
    return Row(
        "importlib", "dedupgraph_startup.py",
        "importing importlib.abc in a fresh interpreter",
        "names only modules the interpreter has loaded (no importlib.abc base classes)",
        Figure('"import importlib.abc"', times["abc"], "ms wall"),
        Figure('"pass"', times["pass"], "ms wall"),
        "8 ms",
        f"medians differ by {number(statistics.median(times['abc']) - statistics.median(times['pass']))} ms; "
        + Figure("-X importtime, importlib.abc cumulative", cumulative, "ms").text(),
    )


class Weights:
    """``mb`` MB of float64 whose content ``salt`` makes new: no segment of it exists yet."""

    def __init__(self, mb: float, salt: int) -> None:
        self.values = np.full(int(mb * 2**20 / 8), float(salt))


def use_weights(block: np.ndarray, weights: Weights) -> np.ndarray:
    return block + weights.values[-1]


def set_window(window: int) -> int:
    """In a worker: pull with ``window`` chunks in flight; the previous setting."""
    import dedupgraph.placement.host as host

    previous, host.WINDOW = host.WINDOW, window
    return previous


def pull_window(repeat: int, scale: float) -> Row:
    from distributed import get_task_stream, wait

    import dedupgraph

    from .host_memory import cluster, segment_directory

    mb = max(2.0, 200 * scale)  # share-min-bytes is 1 MiB
    salts = iter(range(1, 10**6))

    with segment_directory(), cluster(2) as client:

        def pull(window: int, size: float = mb) -> float:
            client.run(set_window, window)
            weights = Weights(size, next(salts))
            x = da.zeros((2, 4), chunks=(1, 4)).map_blocks(use_weights, weights, meta=np.array((), dtype="f8"))
            released(client)
            with dedupgraph.enable(share="host"), get_task_stream(client=client) as stream:
                persisted = client.persist(x)
                wait(persisted)
            spans = [
                s["stop"] - s["start"]
                for task in stream.data
                if str(task["key"]).startswith("dedup-host-")
                for s in task["startstops"]
                if s["action"] == "compute"
            ]
            del persisted
            if len(spans) != 1:
                raise AssertionError(f"expected one hoisted host-shared key, got {len(spans)}")
            return spans[0]

        pull(8, 2.0)  # the first pull (connections, handlers), untimed; 2 MB is over share-min-bytes
        times = interleaved({"4": functools.partial(pull, 4), "8": functools.partial(pull, 8)}, repeat)
    return Row(
        "window", "dedupgraph/placement/host.py (WINDOW)",
        f"a worker pulling a host-shared {number(mb)} MB object from the scheduler (the hoisted key's task)",
        "keeps 8 chunk requests in flight",
        Figure("4 in flight", times["4"], "s wall"),
        Figure("8 in flight, as shipped", times["8"], "s wall"),
        "200 MB on 2 cores: 0.5-0.6 s with 8 in flight, 0.8-0.9 s with 4",
    )


Measure = Callable[[int, float], Row]

#: name -> (how to measure it, whether it needs a LocalCluster)
MEASUREMENTS: dict[str, tuple[Measure, bool]] = {
    "scatter": (scatter_whole, False),
    "gc": (gc_paused, False),
    "subgraphs": (subgraphs_walked_once, False),
    "prescan": (prescan_layers, False),
    "delayed": (delayed_culled, False),
    "frames": (frame_tasks, False),
    "frames-persist": (frame_persist, True),
    "startup": (startup_cost, False),
    "importlib": (importlib_abc, False),
    "window": (pull_window, True),
}

#: what the rows of the cluster measurements say without ``--cluster``
NOT_MEASURED: dict[str, Row] = {
    "frames-persist": Row(
        "frames-persist", "dedupgraph/routes/frames.py (renamed_frame)",
        "persisting the 3,000-partition DataFrame on a LocalCluster of 2 processes x 1 thread",
        "renames the output tasks: no alias task per partition",
        None, None, "21 s instead of 15 s", "not measured: needs --cluster",
    ),
    "window": Row(
        "window", "dedupgraph/placement/host.py (WINDOW)",
        "a worker pulling a host-shared 200 MB object from the scheduler",
        "keeps 8 chunk requests in flight",
        None, None, "200 MB on 2 cores: 0.5-0.6 s with 8 in flight, 0.8-0.9 s with 4",
        "not re-measured here: needs --cluster",
    ),
}


def measure(name: str, repeat: int = 5, scale: float = 1.0, cluster: bool = False) -> Row:
    """The row of measurement ``name`` (see the module doc)."""
    func, needs_cluster = MEASUREMENTS[name]
    if needs_cluster and not cluster:
        return NOT_MEASURED[name]
    return func(repeat, scale)


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| name | module | measurement | the code does instead | the way not taken | the code's way "
        "| ratio (medians) | old ad hoc figure | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        alternative = r.alternative.text() if r.alternative else ""
        chosen = r.chosen.text() if r.chosen else ""
        lines.append(
            f"| {r.name} | {r.module} | {r.measurement} | {r.instead} | {alternative} | {chosen} "
            f"| {ratio_text(r.ratio)} | {r.old} | {r.notes} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dedupgraph.benchmarks.design", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each way (default 5)")
    parser.add_argument("--only", choices=list(MEASUREMENTS), action="append", metavar="NAME",
                        help=f"run only this measurement (repeatable): {', '.join(MEASUREMENTS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (0.05: a smoke run)")
    parser.add_argument("--cluster", action="store_true", help="also the measurements on a LocalCluster")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.scale <= 0:
        parser.error("--repeat must be at least 1 and --scale positive")
    rows = []
    for name in args.only or list(MEASUREMENTS):
        rows.append(measure(name, args.repeat, args.scale, args.cluster))
        print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
