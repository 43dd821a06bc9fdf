"""The scheduler route on real in-process schedulers: every collection, plain keys and annotations, one pass.

Deployments with ``dask scheduler`` / ``dask worker`` processes, and the
settings a remote client sends, are in test_deployment.py.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from distributed import Client, LocalCluster, futures_of

import dedupgraph
from dedupgraph.once import Once
from dedupgraph.tools import hint
from dedupgraph.core.fingerprint import content_fingerprint
from dedupgraph.routes.distributed.hook import interception_problem, materialize_held
from dedupgraph.core.pipeline import deduplicate_graph, task_graph
from dedupgraph.core.plan import hoisted_key
from dedupgraph.core.prescan import nothing_large
from dedupgraph.routes.activation import SCHEDULER_PRELOAD as PRELOAD
from dedupgraph.routes.distributed.plugin import route_on
from dedupgraph.settings import Settings

from payloads import CASES, Mapper, case_settings

NPARTS = 8
ROUTE = {"distributed.scheduler.preload": [PRELOAD]}  # as after enable()


def _cluster(**config):
    with dask.config.set(config):
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", silence_logs=False)


@pytest.fixture(scope="module")
def route():
    with _cluster(**ROUTE) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def plain():
    with _cluster(**{"distributed.scheduler.preload": []}) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


# --- the user's functions ----------------------------------------------------


def with_len(part, m):
    return part.assign(y=part.x + len(m.s))


def row_len(row, m):
    return row.x + len(m.s)


def group_len(group, m):
    return group.x.sum() + len(m.s)


def part_of(i, m):
    return pd.DataFrame({"x": np.arange(i * 4, i * 4 + 4), "y": len(m.s)})


def block_len(block, m):
    return block + len(m.s)


def item_len(x, m):
    return x + len(m.s)


def frame():
    return dd.from_pandas(pd.DataFrame({"x": np.arange(40), "g": np.arange(40) % 4}), npartitions=NPARTS)


TABLE = {i: 2 * i for i in range(20_000)}  # a lookup dict, ~200 KB pickled

# name -> (build(obj) -> collection, the object its tasks carry)
COLLECTIONS = {
    "map_partitions": lambda m: frame().map_partitions(with_len, m),
    "apply-axis-1": lambda m: frame().apply(row_len, axis=1, args=(m,), meta=("x", "i8")),
    "series-map-dict": lambda m: frame().x.map(m, meta=("x", "i8")),
    "groupby-apply": lambda m: frame().groupby("g").apply(group_len, m, meta=("x", "i8")),
    "from_map": lambda m: dd.from_map(part_of, range(NPARTS), m=m),
    "from_delayed": lambda m: dd.from_delayed([delayed(part_of)(i, m) for i in range(NPARTS)], meta=part_of(0, m)),
    "array": lambda m: da.zeros((NPARTS, 4), chunks=(1, 4)).map_blocks(block_len, m),
    "delayed": lambda m: [delayed(item_len)(i, m) for i in range(NPARTS)],
    "bag": lambda m: db.from_sequence(range(NPARTS), npartitions=NPARTS).map(item_len, m),
}


def _done(client, persisted):
    """Wait for ``persisted`` on ``client`` (``distributed.wait`` asks the default client)."""
    client.gather(futures_of(persisted))
    return persisted


def _object(name, index):
    # a content of its own per case: keys left over by another case never count here
    return {k: v + index for k, v in TABLE.items()} if name == "series-map-dict" else Mapper(30_000 + index)


def _local(coll):
    result = dask.compute(coll, scheduler="sync")[0]
    return _comparable(result)


def _comparable(result):
    if isinstance(result, (pd.DataFrame, pd.Series)):
        return result.sort_index()
    return np.asarray(result) if isinstance(result, np.ndarray) else list(result)


def _equal(a, b):
    if isinstance(a, (pd.DataFrame, pd.Series)):
        return a.equals(b)
    return np.array_equal(np.asarray(a), np.asarray(b))


def _hoisted_view(dask_scheduler, key):
    ts = dask_scheduler.tasks.get(key)
    if ts is None:
        return None
    return {
        "dependents": sorted(str(d.key) for d in ts.dependents),
        "largest_dependent_spec": max((len(pickle.dumps(d.run_spec)) for d in ts.dependents), default=0),
        "annotations": dict(ts.annotations),
        "priority": ts.priority,
    }


def _dedup_keys(dask_scheduler):
    return sorted(str(k) for k in dask_scheduler.tasks if str(k).startswith("dedup-"))


def test_this_distributed_has_the_interception_point(route):
    assert interception_problem() is None
    assert materialize_held()
    assert route.run_on_scheduler(lambda dask_scheduler: route_on(dask_scheduler))


@pytest.mark.parametrize("name", list(COLLECTIONS))
def test_every_collection_is_deduplicated_on_the_scheduler(route, name):
    obj = _object(name, list(COLLECTIONS).index(name))
    coll = COLLECTIONS[name](obj)
    expected = _local(coll)
    key = hoisted_key(content_fingerprint(obj))
    persisted = _done(route, route.persist(coll))
    got = _comparable(route.gather(route.compute(persisted)))
    assert _equal(got, expected)
    view = route.run_on_scheduler(_hoisted_view, key=key)
    assert view is not None, f"{key} not on the scheduler: {route.run_on_scheduler(_dedup_keys)}"
    # every partition's task now references the one key, and carries nothing large itself
    assert len(view["dependents"]) == NPARTS
    assert view["largest_dependent_spec"] < 20_000
    assert view["annotations"] == {}


def test_client_map_and_submit_with_large_arguments(route):
    m = Mapper(30_100)
    key = hoisted_key(content_fingerprint(m))
    mapped = route.map(item_len, range(6), m=m)
    assert route.gather(mapped) == [item_len(i, m) for i in range(6)]
    view = route.run_on_scheduler(_hoisted_view, key=key)
    assert view["dependents"] == sorted(f.key for f in mapped)
    assert view["priority"] is not None  # client.map sends priorities for its own keys only
    del mapped

    m2 = Mapper(30_101)
    key2 = hoisted_key(content_fingerprint(m2))
    # one task per graph: the first carries the object, the next ones count it (min-count 2)
    submitted = [route.submit(item_len, i, m2) for i in range(4)]
    assert route.gather(submitted) == [item_len(i, m2) for i in range(4)]
    view = route.run_on_scheduler(_hoisted_view, key=key2)
    assert view["dependents"] == sorted(f.key for f in submitted[1:])


def test_compute_of_collections_and_client_get(route):
    m = Mapper(30_200)
    parts = [delayed(item_len)(i, m) for i in range(NPARTS)]
    assert route.gather(route.compute(parts)) == [item_len(i, m) for i in range(NPARTS)]
    arr = da.ones((NPARTS, 2), chunks=(1, 2)).map_blocks(block_len, m)
    assert float(route.compute(arr.sum()).result()) == float(_local(arr).sum())


def test_one_pass_per_graph_with_the_config_route_on_in_the_client(route, caplog):
    caplog.set_level(logging.INFO, logger="dedupgraph")
    m, n, k = Mapper(30_300), Mapper(30_301), Mapper(30_302)
    with dedupgraph.enable():  # the client ships its pass with the array and delayed parts
        colls = [
            da.zeros((NPARTS, 4), chunks=(1, 4)).map_blocks(block_len, m),
            *[delayed(item_len)(i, n) for i in range(NPARTS)],
            frame().map_partitions(with_len, k),
        ]
        persisted = _done(route, route.persist(colls))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hoisted")]
    # one pass, on the whole graph: the DataFrame's object too, in the same line
    assert len(lines) == 1, lines
    assert lines[0].startswith("hoisted 3 objects")
    assert route.gather(route.compute(persisted[1 : 1 + NPARTS])) == [item_len(i, n) for i in range(NPARTS)]


def _all_task_annotations(dask_scheduler):
    return {str(k): dict(ts.annotations) for k, ts in dask_scheduler.tasks.items()}


def _internal_priorities(dask_scheduler):
    # (user priority, generation, dask.order's priority): only the last is the graph's own
    return {str(k): ts.priority[-1] for k, ts in dask_scheduler.tasks.items()}


def test_keys_and_annotations_are_those_of_plain_dask(route, plain):
    m = Mapper(30_400)
    workers = list(plain.scheduler_info()["workers"])[:1]

    def build():
        with dask.annotate(team="layers", retries=1):
            arr = da.zeros((NPARTS, 4), chunks=(1, 4)).map_blocks(block_len, m)
        return [arr, frame().map_partitions(with_len, m), *[delayed(item_len)(i, m) for i in range(3)]]

    seen, priorities = {}, {}
    colls = build()  # once: keys of objects dask cannot tokenize are random
    for client in (plain, route):
        # global annotations: around the call, and the call's own keywords
        with dask.annotate(team="ours", priority=3):
            persisted = _done(client, client.persist(colls, retries=2, workers=workers, allow_other_workers=True))
        seen[client] = client.run_on_scheduler(_all_task_annotations)
        priorities[client] = client.run_on_scheduler(_internal_priorities)
        del persisted
    ours = {k: v for k, v in seen[route].items() if not k.startswith("dedup-")}
    hoisted = {k: v for k, v in seen[route].items() if k.startswith("dedup-")}
    relevant = {k: v for k, v in seen[plain].items() if k in ours}
    assert set(relevant) == set(ours)  # the same keys
    assert relevant == ours  # the same annotations, layer and global ones
    assert ours and all(v.get("team") in ("ours", "layers") for v in ours.values())
    key = hoisted_key(content_fingerprint(m))
    assert hoisted[key] == {}  # data: no restriction, no retries, no priority of the user's
    # dask.order's priorities of plain dask's graph; the hoisted key before every task
    assert {k: priorities[route][k] for k in ours} == {k: priorities[plain][k] for k in ours}
    assert priorities[route][key] < min(priorities[route][k] for k in ours)


def test_invalid_settings_on_the_scheduler_leave_graphs_unchanged_with_one_warning(route, caplog):
    caplog.set_level(logging.INFO, logger="dedupgraph")
    m = Mapper(30_500)
    with dask.config.set({"dedupgraph.min-count": 0}):  # the scheduler's own settings, read for this graph
        parts = [delayed(item_len)(i, m) for i in range(NPARTS)]
        assert route.gather(route.compute(parts)) == [item_len(i, m) for i in range(NPARTS)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "scheduler route failed; graph left unchanged" in warnings[0].getMessage()
    assert "min-count" in str(warnings[0].exc_info[1])
    assert not [r for r in caplog.records if r.getMessage().startswith("hoisted")]


def test_a_scheduler_without_the_route_in_the_same_process_is_untouched(route, plain):
    m = Mapper(30_600)
    key = hoisted_key(content_fingerprint(m))
    for client in (route, plain):
        persisted = _done(client, client.persist(frame().map_partitions(with_len, m)))
        on_it = client.run_on_scheduler(_hoisted_view, key=key)
        assert (on_it is not None) is (client is route)
        del persisted


def test_a_scheduler_with_the_route_is_never_sampled_for_the_hint(route, monkeypatch, caplog):
    monkeypatch.setattr(hint, "_given", Once())
    route.run_on_scheduler(lambda dask_scheduler: hint.dask_setup(dask_scheduler))  # the hint switched on there too (hint.install() does it)
    caplog.set_level(logging.INFO, logger="dedupgraph")
    # the route hoists nothing: 60 copies (14 MB) stay, over hint-bytes, and it must not look
    with dask.config.set({"dedupgraph.min-bytes": "1 GiB"}):
        df = dd.from_pandas(pd.DataFrame({"x": np.arange(60)}), npartitions=60)
        _done(route, route.persist(df.map_partitions(with_len, Mapper(30_700))))
    assert "dedupgraph-hint" in route.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
    assert not [r for r in caplog.records if "dedupgraph is off" in r.getMessage()]
    assert not hint._given


def test_a_scheduler_without_the_route_hints_for_any_client(monkeypatch, caplog):
    monkeypatch.setattr(hint, "_given", Once())
    caplog.set_level(logging.INFO, logger="dedupgraph")
    with dask.config.set({"distributed.scheduler.preload": [], "distributed.client.preload": ["dedupgraph.preload"]}):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0", silence_logs=False) as cluster:
            # the first client with dedupgraph's preload gives it the hint; graphs from any client count
            with Client(cluster, set_as_default=False) as first:
                assert "dedupgraph-hint" in first.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
            with dask.config.set({"distributed.client.preload": []}), Client(cluster, set_as_default=False) as other:
                df = dd.from_pandas(pd.DataFrame({"x": np.arange(60)}), npartitions=60)
                _done(other, other.persist(df.map_partitions(with_len, Mapper())))
    [record] = [r for r in caplog.records if "dedupgraph is off" in r.getMessage()]
    assert "(Mapper, in 60 of" in record.getMessage()
    assert "DASK_DEDUPGRAPH__ENABLED=True in this scheduler's environment" in record.getMessage()


def test_enable_gives_a_local_cluster_started_afterwards_the_route():
    with dedupgraph.enable():
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as c:
            assert c.run_on_scheduler(lambda dask_scheduler: route_on(dask_scheduler))
    with dedupgraph.enable(), dedupgraph.disable():
        assert PRELOAD not in dask.config.get("distributed.scheduler.preload")


WITHOUT_THE_POINT = """
    import logging, warnings
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    import dask
    import distributed.scheduler as ds
    from dask import delayed
    from distributed import Client, LocalCluster

    original = ds._materialize_graph
    config = {"distributed.scheduler.preload": ["dedupgraph.scheduler"]}

    # 1. the route holds distributed's function while a scheduler runs it, and gives it back
    with dask.config.set(config), LocalCluster(n_workers=1, processes=False, dashboard_address=":0"):
        print("held", ds._materialize_graph is not original)
    print("given back", ds._materialize_graph is original)

    # 2. as if a distributed release had changed it: one warning, the route off, graphs unchanged
    def _materialize_graph(expr, validate, extra=None):
        return original(expr, validate)

    ds._materialize_graph = _materialize_graph
    big = bytes(range(256)) * 1000
    for _ in range(2):
        with dask.config.set(config), LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as c:
                print("result", c.gather(c.compute([delayed(len)(big) for _ in range(4)])))
                print("plugins", sorted(c.run_on_scheduler(lambda dask_scheduler: [
                    p for p in dask_scheduler.plugins if p.startswith("dedupgraph")])))
                print("untouched", ds._materialize_graph is _materialize_graph)
"""


def test_without_the_interception_point_the_route_stays_off_with_one_warning():
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_THE_POINT)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == ["held True", "given back True"]
    assert lines[2:] == ["result [256000, 256000, 256000, 256000]", "plugins ['dedupgraph-hint']", "untouched True"] * 2
    warnings = [line for line in done.stderr.splitlines() if line.startswith("dedupgraph WARNING")]
    assert len(warnings) == 1, done.stderr[-3000:]
    assert "scheduler route stays off" in warnings[0] and "takes (expr, validate, extra)" in warnings[0]


ARRAY_EXPR = """
    import dask, dask.array as da, numpy as np
    from distributed import Client, LocalCluster, futures_of, wait
    assert type(da.ones(2)).__module__.startswith("dask.array._array_expr"), type(da.ones(2))

    class Table:
        def __init__(self):
            self.values = np.arange(40_000)

    def add(block, table):
        return block + table.values[-1]

    with dask.config.set({"distributed.scheduler.preload": ["dedupgraph.scheduler"]}):
        with LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster, Client(cluster) as c:
            x = da.zeros((8, 4), chunks=(1, 4)).map_blocks(add, Table())
            p = c.persist(x)
            wait(p)
            keys = c.run_on_scheduler(lambda dask_scheduler: {
                str(k): len(ts.dependents) for k, ts in dask_scheduler.tasks.items() if str(k).startswith("dedup-")})
            print("hoisted", sorted(k.rsplit("-", 1)[0] for k in keys), sorted(keys.values()))
            print("result", float(c.compute(p.sum()).result()))
"""


def test_array_expr_arrays():
    # array.query-planning is read once, when dask.array is first imported
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("DASK_")}
    env["DASK_ARRAY__QUERY_PLANNING"] = "True"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ARRAY_EXPR)], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["hoisted ['dedup-Table'] [8]", f"result {8 * 4 * 39_999.0}"]


def test_scheduler_cost_benchmark_smoke():
    """``python -m dedupgraph.benchmarks.scheduler_cost`` at a tiny size: behaviour only, no timings asserted."""
    done = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.scheduler_cost", "--tasks", "200", "--repeat", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("\n\n")[-1].splitlines()[2:]
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[-2].strip() for line in table}
    assert rows == {
        ("array", "none"): "0", ("array", "shared"): "1", ("array", "medium"): "0",  # medium: arrays only
        ("dataframe", "none"): "0", ("dataframe", "shared"): "1",
    }


# --- the prescan: a shortcut that must never hide what the pass would hoist -----------


def _expr(coll):
    from dask.base import collections_to_expr

    return collections_to_expr(coll if isinstance(coll, list) else [coll]).optimize()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_prescan_never_hides_what_the_pass_hoists(case):
    settings = Settings(**case_settings(case))
    coll = CASES[case](Mapper())
    graph = task_graph(_expr(coll).__dask_graph__())
    assert deduplicate_graph(graph, settings) is not graph  # the pass hoists here...
    assert not nothing_large(_expr(coll), settings)  # ...so the prescan must not say "nothing"


NOTHING_LARGE = {
    "array-reduction": lambda: (da.ones((40, 4), chunks=(1, 4)) + 1).sum(),
    "array-from-a-large-numpy-array": lambda: da.from_array(np.arange(200_000), chunks=1000) + 1,
    "bag": lambda: db.from_sequence(range(40), npartitions=8).map(str).filter(bool),
    "delayed": lambda: [delayed(sum)([i, 1]) for i in range(20)],
}


@pytest.mark.parametrize("name", sorted(NOTHING_LARGE))
def test_the_prescan_recognizes_graphs_with_nothing_large(name):
    coll = NOTHING_LARGE[name]()
    graph = task_graph(_expr(coll).__dask_graph__())
    assert deduplicate_graph(graph, Settings()) is graph
    assert nothing_large(_expr(coll), Settings())


def test_the_prescan_leaves_other_expressions_to_the_pass():
    assert not nothing_large(_expr(frame()), Settings())  # dask-expr: no layers to read
    assert not nothing_large({"a": 1}, Settings())


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_route_hoists_what_the_pass_hoists_and_computes_the_same(case, caplog):
    """Whether in the layers (``Blockwise`` literals) or by the pass, the same keys, the same results."""
    import inspect

    import distributed.scheduler
    from dask.core import flatten
    from dask.local import get_sync

    from dedupgraph.routes.distributed.submissions import Route, Submission

    caplog.set_level(logging.INFO, logger="dedupgraph")
    chosen = case_settings(case)
    original = inspect.unwrap(distributed.scheduler._materialize_graph)
    coll = CASES[case](Mapper())
    keys = list(flatten(_expr(coll).__dask_keys__()))
    plain, _ = original(_expr(coll), False)
    expected = deduplicate_graph(plain, Settings(**chosen))
    caplog.clear()
    with dask.config.set({f"dedupgraph.{k.replace('_', '-')}": v for k, v in chosen.items()}):
        routed, _ = Route().handle(original, _expr(coll), False, Submission(ordering={}))
    assert set(routed) == set(expected) and set(routed) - set(plain)
    assert len([r for r in caplog.records if r.getMessage().startswith("hoisted 1 object")]) == 1
    got, want = get_sync(routed, keys), get_sync(plain, keys)
    for a, b in zip(got, want):
        assert np.array_equal(np.asarray(a), np.asarray(b)) if isinstance(a, np.ndarray) else a == b
