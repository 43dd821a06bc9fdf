"""dedupgraph.deduplicate: collections deduplicated now, hoisted objects scattered once."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from unittest import mock

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from dask._task_spec import DataNode, Task, TaskRef
from distributed import Client, LocalCluster, wait

import dedupgraph
from dedupgraph.routes.deduplicate import deduplicate
from dedupgraph.core.pipeline import task_graph
from dedupgraph.placement.scatter import HoldingLayer, ScatteredRef

from payloads import Mapper, amm_stopped, hoisted_keys, payload, uses_mapper

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        yield c


def add_len(part, lookup):
    return part + len(lookup)


def row_plus(row, mapper):
    return row.x + len(mapper.s)


def every_kind(mapper):
    """An array, delayed values, a bag and two DataFrame series, all carrying ``mapper``.

    A Mapper, not a plain list: ``map_blocks`` already moves arguments whose
    ``sizeof`` exceeds 1 MB into a key of their own.
    """
    x = da.arange(40, chunks=4).map_blocks(uses_mapper, mapper)
    ds = [delayed(uses_mapper)(i, mapper) for i in range(6)]
    b = db.from_sequence(range(12), npartitions=6).map(uses_mapper, mapper)
    df = dd.from_pandas(pd.DataFrame({"x": range(60)}), npartitions=12)
    return (
        x,
        ds,
        b,
        df.x.map_partitions(uses_mapper, mapper, meta=df.x._meta),
        df.apply(row_plus, axis=1, args=(mapper,), meta=(None, "int64")),
    )


def assert_same(got, expected):
    for g, e in zip(got, expected):
        if isinstance(e, (pd.Series, pd.DataFrame)):
            pd.testing.assert_series_equal(g, e)
        elif isinstance(e, np.ndarray):
            np.testing.assert_array_equal(g, e)
        else:
            assert g == e


def collection_graph(coll):
    return task_graph(dict(coll.__dask_graph__()))


def test_without_client_hoists_into_graph_keys():
    colls = every_kind(Mapper())
    out = deduplicate(*colls, client=False)
    assert [type(o) for o in out] == [type(c) for c in colls]
    assert_same(dask.compute(*out, scheduler="sync"), dask.compute(*colls, scheduler="sync"))
    for coll in (out[0], out[1][0], out[2], out[3], out[4]):
        graph = collection_graph(coll)
        [key] = hoisted_keys(graph)
        assert isinstance(graph[key], DataNode)
        tasks, _ = payload(graph)
        assert tasks < 100_000  # the 241 KB Mapper is no longer inside every task


def test_many_delayed_are_optimized_in_one_call_of_their_optimizer():
    from dask.delayed import optimize as delayed_optimize

    calls = []

    def counting(dsk, keys, **kwargs):
        calls.append(sorted(keys))
        return delayed_optimize(dsk, keys, **kwargs)

    mapper = Mapper(30_020)
    tasks = [delayed(uses_mapper)(i, mapper) for i in range(30)]
    with dask.config.set(delayed_optimize=counting):
        (out,) = deduplicate(tasks, client=False)
    assert calls == [sorted(t.key for t in tasks)]  # one graph for all 30, culled once
    assert dask.compute(*out, scheduler="sync") == tuple(uses_mapper(i, mapper) for i in range(30))
    graph = task_graph({k: v for d in out for k, v in dict(d.__dask_graph__()).items()})
    assert len(hoisted_keys(graph)) == 1 and len(graph) == 31
    with dedupgraph.enable():  # the pass as delayed_optimize: its base optimizes, the pass runs once after
        (again,) = deduplicate(tasks, client=False)
    assert dask.compute(*again, scheduler="sync") == tuple(uses_mapper(i, mapper) for i in range(30))


def test_scatters_each_object_once_under_its_content_key(client):
    mapper = Mapper()
    colls = every_kind(mapper)
    with mock.patch.object(client, "scatter", wraps=client.scatter) as scatter:
        out = deduplicate(*colls, client=client)
    [call] = scatter.call_args_list
    [(key, value)] = call.args[0].items()
    assert key.startswith("dedup-Mapper-") and value is mapper
    for coll in (out[0], out[1][0], out[2], out[3], out[4]):
        graph = collection_graph(coll)
        assert [k for k, node in graph.items() if key in node.dependencies], "tasks reference the key"
        tasks, _ = payload(graph)
        assert tasks < 100_000
    assert client.who_has()[key]
    assert_same(client.gather(client.compute(list(out))), dask.compute(*colls, scheduler="sync"))


def _refs(value):
    """Every TaskRef inside a task: arguments, containers, nested and fused inner tasks."""
    if isinstance(value, TaskRef):
        yield value
    elif isinstance(value, Task):
        for inner in (*value.args, *value.kwargs.values()):
            yield from _refs(inner)
    elif isinstance(value, (list, tuple, set)):
        for inner in value:
            yield from _refs(inner)
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _refs(inner)


def test_array_bag_delayed_tasks_hold_the_future_dataframes_hold_it_beside():
    # dask-expr layers are not copied by pickle within one process: see Rewritten
    x, ds, b, s, _ = every_kind(Mapper(30_001))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc, Client(lc) as c:
        x2, s2 = deduplicate(x, s, client=c)
        [key] = [k for k in c.futures if str(k).startswith("dedup-")]
        held = [r for node in collection_graph(x2).values() for r in _refs(node)]
        ref = next(r for r in held if isinstance(r, ScatteredRef))
        assert ref.key == key and ref.future.key == key
        # the future never travels: the scheduler sees a plain reference
        assert type(pickle.loads(pickle.dumps(ref))) is TaskRef
        [layer] = [op for e in s2.expr.walk() for op in e.operands if isinstance(op, HoldingLayer)]
        assert [r.key for r in layer.refs] == [key] and isinstance(layer.refs[0], ScatteredRef)
        s_refs = [r for node in collection_graph(s2).values() for r in _refs(node)]
        assert any(a.key == key for a in s_refs) and not any(isinstance(a, ScatteredRef) for a in s_refs)
        # deduplicating again keeps holding it
        (s3,) = deduplicate(s2 + 1, client=c)
        assert [r.key for e in s3.expr.walk() for op in e.operands if isinstance(op, HoldingLayer) for r in op.refs] == [key]


def _frame(mapper, partitions=12):
    df = dd.from_pandas(pd.DataFrame({"x": range(partitions * 5)}), npartitions=partitions)
    return df.map_partitions(add_len_frame, mapper, meta={"x": "i8"})


def add_len_frame(part, mapper):
    return part + len(mapper.s)


def test_dataframes_are_rebuilt_without_an_alias_per_partition(client):
    from dedupgraph.routes.frames import RenamedGraph

    mapper = Mapper(30_007)
    df = _frame(mapper)
    (out,) = deduplicate(df, client=client)
    assert isinstance(out.expr, RenamedGraph)
    graph = collection_graph(out)
    plain = dask.base.collections_to_expr([df]).optimize().__dask_graph__()
    # one entry more: the scattered key's run_spec, which only reports its loss
    assert len(graph) == len(plain) + 1 and [k for k in graph if str(k).startswith("dedup-Mapper-")]
    assert not [n for n in graph.values() if type(n).__name__ == "Alias"]
    assert [k[1] for k in out.__dask_keys__()] == list(range(12)) and all(k in graph for k in out.__dask_keys__())
    pd.testing.assert_frame_equal(client.compute(out).result(), df.compute(scheduler="sync"))
    persisted = client.persist(out)
    # persist only sends the graph; wait until the scheduler holds it before counting
    wait(persisted)
    assert client.run_on_scheduler(_count_prefixed, out._name) == 12
    pd.testing.assert_frame_equal(persisted.compute(), df.compute(scheduler="sync"))


def _count_prefixed(prefix, dask_scheduler):
    return sum(1 for k in dask_scheduler.tasks if isinstance(k, tuple) and k[0] == prefix)


def test_dataframes_sharing_outputs_keep_them_shared(client):
    from dedupgraph.routes.frames import RenamedGraph

    mapper = Mapper(30_008)
    df = _frame(mapper)
    total = df.x.sum()
    out, out_total = deduplicate(df, total, client=client)
    # the sum needs df's partitions: renaming them would compute them twice
    assert not isinstance(out.expr, RenamedGraph)
    expected = df.compute(scheduler="sync")
    got, got_total = client.compute([out, out_total], sync=True)
    pd.testing.assert_frame_equal(got, expected)
    assert got_total == expected.x.sum()


def test_default_client_is_used_and_false_opts_out(client):
    # a plain list: distributed would serialize it item by item, scatter pickles it whole
    lookup = list(range(20_000))
    ds = [delayed(add_len)(i, lookup) for i in range(2)]
    (scattered,) = deduplicate(ds, min_bytes="16 KiB")
    (local,) = deduplicate(ds, client=False, min_bytes="16 KiB")
    key = hoisted_keys(collection_graph(local[0]))[0]
    assert key in client.futures
    assert isinstance(collection_graph(local[0])[key], DataNode)
    with amm_stopped(client):  # copies counted: none dropped in between
        assert dask.compute(*scattered) == dask.compute(*local, scheduler="sync") == (20_000, 20_001)
        held = {w: t for w, t in client.run(_value_type, key).items() if t}
        assert held == {w: "list" for w in client.who_has()[key]}


def _value_type(key, dask_worker):
    return type(dask_worker.data[key]).__name__ if key in dask_worker.data else None


def test_second_call_reuses_the_future_on_the_cluster(client):
    # equal content in distinct objects (merge-equal: always): same key, sent once
    first = [delayed(uses_mapper)(i, Mapper(30_003)) for i in range(8)]
    second = [delayed(uses_mapper)(i + 50, Mapper(30_003)) for i in range(8)]
    # the Active Memory Manager may drop the first copy once a second exists: paused, so only a resend changes the object
    with amm_stopped(client):
        with mock.patch.object(client, "scatter", wraps=client.scatter) as scatter:
            (a,) = deduplicate(first, client=client, merge_equal="always")
            key = hoisted_keys(collection_graph(a[0]))[0]
            before = client.run(_data_id, key)
            (b,) = deduplicate(second, client=client, merge_equal="always")
            assert client.gather(client.compute(a + b)) == [uses_mapper(i, Mapper(30_003)) for i in range(8)] + [
                uses_mapper(i + 50, Mapper(30_003)) for i in range(8)
            ]
        after = client.run(_data_id, key)
    assert scatter.call_count == 1
    # the very same deserialized object on the worker that got it: not sent again
    assert {w: i for w, i in after.items() if i and before.get(w)} == {w: i for w, i in before.items() if i}


def _data_id(key, dask_worker):
    value = dask_worker.data.get(key) if key in dask_worker.data else None
    return id(value) if value is not None else None


def test_broadcast_puts_a_copy_on_every_worker(client):
    mapper = Mapper(30_004)
    with amm_stopped(client):  # the Active Memory Manager would soon drop the surplus copies
        (ds,) = deduplicate([delayed(uses_mapper)(i, mapper) for i in range(4)], client=client, broadcast=True)
        key = hoisted_keys(collection_graph(ds[0]))[0]
        assert len(client.who_has()[key]) == len(client.scheduler_info()["workers"]) == 2
        assert client.gather(client.compute(ds)) == [uses_mapper(i, mapper) for i in range(4)]


def test_fixes_the_large_graph_warning_for_equal_distinct_objects(client):
    # 50 tasks x 241 KB, each its own Mapper (a model loaded in a loop): pickled once each, 12 MB
    colls = [delayed(uses_mapper)(i, Mapper(30_005)) for i in range(50)]
    with pytest.warns(UserWarning, match="Sending large graph"):
        plain = client.persist(colls)
    (kept_apart,) = deduplicate(colls, client=client)  # merge-equal: immutable keeps mutable copies apart
    assert kept_apart is colls
    (dedup,) = deduplicate(colls, client=client, merge_equal="always")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Sending large graph")
        ours = client.persist(dedup)
    assert client.gather(client.compute(ours)) == client.gather(client.compute(plain))


def test_memory_returns_after_dropping_collections_and_results(client):
    """Read as the scheduler counts it: managed memory, what the workers hold as data."""
    before = client.run_on_scheduler(_managed)
    table = np.random.default_rng(0).random(1_000_000)  # 8 MB, sized correctly by sizeof
    df = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=8)
    series = df.x.map_partitions(plus_first, table, meta=("x", "f8"))
    ds, series = deduplicate([delayed(np.dot)(table, table) for _ in range(10)], series, client=client)
    results = [client.persist(ds), client.persist(series)]  # one kind per call, as dask prefers
    client.gather(client.compute(results[0]))
    client.compute(results[1]).result()
    held = []
    _wait_until(lambda: held.append(client.run_on_scheduler(_managed)) or held[-1] - before >= 8_000_000)  # the table is on the cluster...
    del ds, series, results, table
    gc.collect()
    _wait_until(lambda: not [k for k in client.futures if str(k).startswith("dedup-")])
    _wait_until(lambda: not client.run_on_scheduler(_dedup_keys_on_scheduler))
    after = []
    _wait_until(lambda: after.append(client.run_on_scheduler(_managed)) or abs(after[-1] - before) < 100_000)  # ...and gone with the collections
    print(f"managed memory: before {before}, held {held[-1]}, after {after[-1]}")


def _managed(dask_scheduler):
    return dask_scheduler.memory.managed


def plus_first(part, table):
    return part + table[0]


def _dedup_keys_on_scheduler(dask_scheduler):
    return [k for k in dask_scheduler.tasks if str(k).startswith("dedup-")]


def _wait_until(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_client_reuses_what_the_first_holds(cluster, client):
    (first,) = deduplicate([delayed(uses_mapper)(i, m) for m in [Mapper(30_006)] for i in range(4)], client=client)
    with Client(cluster, set_as_default=False) as other:
        with mock.patch.object(other, "scatter", wraps=other.scatter) as scatter:
            (second,) = deduplicate([delayed(uses_mapper)(i, m) for m in [Mapper(30_006)] for i in range(4, 8)], client=other)
        assert scatter.call_count == 0
        del first
        gc.collect()
        time.sleep(0.3)  # the first client's release reaches the scheduler
        assert other.gather(other.compute(second)) == [uses_mapper(i, Mapper(30_006)) for i in range(4, 8)]


def test_settings_non_collections_and_nesting():
    mapper = Mapper()
    x = da.arange(8, chunks=2).map_blocks(uses_mapper, mapper)
    d = delayed(uses_mapper)(1, mapper)
    out = deduplicate({"x": x, "n": 3}, [d, "text"], 7, client=False)
    assert out[0]["n"] == 3 and out[1][1] == "text" and out[2] == 7
    assert len(hoisted_keys(collection_graph(out[0]["x"]))) == 1
    # nothing hoisted: the very same collections come back, not rebuilt ones
    assert deduplicate(x, [d], client=False, min_bytes="1 GiB") == (x, [d])
    (untouched,) = deduplicate(x, client=False, min_bytes="1 GiB")
    assert untouched is x
    (dry,) = deduplicate(x, client=False, dry_run=True)
    assert dry is x
    with pytest.raises(ValueError, match="unknown dedupgraph setting"):
        deduplicate(x, client=False, min_size=3)
    assert deduplicate(1, "a") == (1, "a")


def test_pass_enabled_runs_once_and_output_is_stable():
    x = da.arange(8, chunks=2).map_blocks(uses_mapper, Mapper())
    with dedupgraph.enable():
        (once,) = deduplicate(x, client=False)
        (twice,) = deduplicate(once, client=False)
        assert hoisted_keys(collection_graph(once)) == hoisted_keys(collection_graph(twice))
        np.testing.assert_array_equal(twice.compute(scheduler="sync"), x.compute(scheduler="sync"))


ARRAY_EXPR_SCRIPT = textwrap.dedent(
    """
    import dask, dask.array as da, numpy as np
    from distributed import Client, LocalCluster
    from dedupgraph import deduplicate
    from dedupgraph.core.pipeline import task_graph

    from payloads import Mapper, uses_mapper

    assert type(da.ones(2)).__module__.startswith("dask.array._array_expr"), type(da.ones(2))
    x = da.arange(40, chunks=4).map_blocks(uses_mapper, Mapper())
    expected = x.compute(scheduler="sync")
    (local,) = deduplicate(x, client=False)
    graph = task_graph(dict(local.__dask_graph__()))
    assert [k for k in graph if str(k).startswith("dedup-Mapper-")], list(graph)
    np.testing.assert_array_equal(local.compute(scheduler="sync"), expected)
    from dedupgraph import inspect
    [row] = [r for r in inspect(x).rows if r.label == "Mapper"]
    assert row.hoisted and row.tasks == 10, row
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc, Client(lc) as c:
        (remote,) = deduplicate(x, client=c)
        assert [k for k in c.futures if str(k).startswith("dedup-Mapper-")]
        np.testing.assert_array_equal(remote.compute(), expected)
    print("array-expr ok")
    """
)


def test_array_expr_arrays_with_query_planning():
    # array.query-planning is read once, when dask.array is first imported
    path = os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "DASK_ARRAY__QUERY_PLANNING": "True", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", ARRAY_EXPR_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "array-expr ok" in done.stdout
