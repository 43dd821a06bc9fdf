"""End to end: every position a user's object can take, on real local schedulers."""

from __future__ import annotations

import logging
from typing import Any
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing

import cloudpickle
import dask
import numpy as np
import pytest
from dask import delayed

import dedupgraph
from dedupgraph.core.pipeline import deduplicate_graph, task_graph
from dedupgraph.settings import Settings

from payloads import (
    CASES,
    N_CHUNKS,
    ExplodingPickle,
    Mapper,
    Unpicklable,
    _arr,
    case_settings,
    _inc,
    hoisted_keys,
    optimized_graph,
    payload,
    sum_sizes,
    uses_mapper,
)

@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _compute(coll, scheduler, pool):
    kwargs = {"pool": pool} if scheduler == "processes" else {}
    (result,) = dask.compute(coll, scheduler=scheduler, **kwargs)
    return result


def _assert_same(a, b):
    if isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_results_unchanged_and_payload_collapses(case, scheduler, process_pool):
    m = Mapper()
    coll = CASES[case](m)
    expected = _compute(coll, scheduler, process_pool)

    with dedupgraph.enable(**case_settings(case)):
        got = _compute(coll, scheduler, process_pool)
        graph = optimized_graph(coll)
    _assert_same(got, expected)

    plain_tasks, plain_hoisted = payload(optimized_graph(coll))
    tasks, hoisted = payload(graph)
    one_copy = len(cloudpickle.dumps(m))
    assert plain_hoisted == 0
    assert plain_tasks > N_CHUNKS * one_copy * 0.9  # really embedded everywhere before
    assert len(hoisted_keys(graph)) == 1
    assert one_copy * 0.9 < hoisted < one_copy * 1.3  # about one copy left
    assert tasks < plain_tasks / 20


def test_hoisted_key_names_type_and_content():
    with dedupgraph.enable():
        graph = optimized_graph(CASES["map_blocks-arg"](Mapper()))
        method_graph = optimized_graph(CASES["bound-method-fused"](Mapper()))
    (key,) = hoisted_keys(graph)
    prefix, label, digest = key.split("-")
    assert (prefix, label, len(digest)) == ("dedup", "Mapper", 32)
    (mkey,) = hoisted_keys(method_graph)
    assert mkey.startswith("dedup-Mapper-method-")
    # the dashboard groups by key_split: our prefix must survive it
    from dask.utils import key_split

    assert key_split(mkey) == "dedup-Mapper-method"


def test_same_content_gives_same_key_across_processes():
    script = (
        "import sys; sys.path.insert(0, 'tests');"
        "import dedupgraph; from payloads import CASES, Mapper, optimized_graph, hoisted_keys;"
        "ctx = dedupgraph.enable(); print(hoisted_keys(optimized_graph(CASES['delayed-arg'](Mapper()))))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    with dedupgraph.enable():
        here = hoisted_keys(optimized_graph(CASES["delayed-arg"](Mapper())))
    assert outs == {f"{here}\n"}


def test_pass_is_idempotent():
    m = Mapper()
    coll = (_arr().map_blocks(m.method) + 1).sum()
    with dedupgraph.enable():
        (once,) = dask.optimize(coll)
    graph = dict(once.__dask_graph__())
    keys = once.__dask_keys__()
    assert len(hoisted_keys(graph)) == 1
    # the dedup stage alone on its own output: nothing to do, same graph object back
    assert dedupgraph.Deduplicator()(graph, keys) is graph
    # the full optimizer again (dask's own fusion renames keys; we add nothing new)
    again = task_graph(dedupgraph.dedup(graph, keys))
    assert hoisted_keys(again) == hoisted_keys(graph)
    assert dask.get(again, keys) == dask.get(graph, keys)
    with dedupgraph.enable():
        assert once.compute(scheduler="sync") == coll.compute(scheduler="sync")


def test_single_use_object_stays_inline():
    m = Mapper()
    coll = delayed(uses_mapper)(1, m)
    with dedupgraph.enable():
        graph = optimized_graph(coll)
        assert coll.compute() == uses_mapper(1, m)
    assert hoisted_keys(graph) == []


def test_single_use_is_hoisted_when_min_count_is_one():
    with dedupgraph.enable(min_count=1):
        graph = optimized_graph(delayed(uses_mapper)(1, Mapper()))
    assert len(hoisted_keys(graph)) == 1


def test_small_objects_stay_inline_and_unpickled():
    small = list(range(100))
    coll = [delayed(sum_sizes)(small, i) for i in range(N_CHUNKS)]
    with dedupgraph.enable():
        graph = optimized_graph(*coll)
    assert hoisted_keys(graph) == []


def test_min_bytes_decides(caplog):
    m = Mapper(rows=2000)  # ~16 KB pickled
    coll = CASES["delayed-arg"](m)
    with dedupgraph.enable():  # auto: carried by every chunk, it pays
        assert len(hoisted_keys(optimized_graph(*coll))) == 1
    with dedupgraph.enable(min_bytes="32 KiB"):  # a pinned size
        assert hoisted_keys(optimized_graph(*coll)) == []
    with dedupgraph.enable(min_bytes="8 KiB"):
        assert len(hoisted_keys(optimized_graph(*coll))) == 1


@pytest.mark.parametrize("cls", [Unpicklable, ExplodingPickle])
def test_unpicklable_objects_stay_inline(cls, caplog):
    obj = cls()
    coll = [delayed(lambda o, i: len(o.payload) + i)(obj, i) for i in range(N_CHUNKS)]
    expected = dask.compute(*coll, scheduler="sync")
    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    with dedupgraph.enable():
        graph = optimized_graph(*coll)
        got = dask.compute(*coll, scheduler="threads")
    assert got == expected
    assert hoisted_keys(graph) == []
    assert any("pickling failed" in r.message and cls.__name__ in r.message for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unpicklable_neighbours_do_not_stop_hoisting():
    m, bad = Mapper(), Unpicklable()
    coll = [delayed(lambda a, b, i: len(a.s) + len(b.payload) + i)(m, bad, i) for i in range(6)]
    with dedupgraph.enable():
        graph = optimized_graph(*coll)
        got = dask.compute(*coll, scheduler="sync")
    assert got == tuple(len(m.s) + 200_000 + i for i in range(6))
    assert [k.split("-")[1] for k in hoisted_keys(graph)] == ["Mapper"]


def test_legacy_tuple_graph():
    m = Mapper()
    dsk = {("x", i): (uses_mapper, i, m) for i in range(N_CHUNKS)}
    dsk["total"] = (sum, [("x", i) for i in range(N_CHUNKS)])
    out = dedupgraph.Deduplicator()(dsk, ["total"])
    assert len(hoisted_keys(out)) == 1
    for get in (dask.get, dask.threaded.get):
        assert get(out, "total") == get(dsk, "total")


def test_internal_failure_leaves_graph_unchanged(monkeypatch, caplog):
    import dedupgraph.core.pipeline as optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("bug in the pass")

    monkeypatch.setattr(optimizer, "find_candidates", broken)
    coll = CASES["map_blocks-arg"](Mapper())
    expected = coll.compute(optimize_graph=True)
    with dedupgraph.enable():
        np.testing.assert_array_equal(coll.compute(), expected)
    assert any("graph left unchanged" in r.message for r in caplog.records)


def test_deduplicate_graph_returns_input_when_nothing_to_hoist():
    dsk = {"a": (sum, [1, 2])}
    assert deduplicate_graph(dsk, Settings()) is dsk


def test_tasks_that_do_not_change_keep_identity():
    m = Mapper()
    a = delayed(uses_mapper)(1, m)
    b = delayed(uses_mapper)(2, m)
    c = delayed(_inc)(3)
    graph = optimized_graph(a, b, c)
    out = deduplicate_graph(graph, Settings())
    assert out[c.key] is graph[c.key]
    assert out[a.key] is not graph[a.key]


def test_a_graph_whose_layers_hold_nothing_large_is_not_walked(monkeypatch):
    import dask.array as da
    from dask.array.optimization import optimize

    import dedupgraph.core.pipeline as pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pass walked a graph whose layers hold nothing large")

    def small() -> Any:
        return (da.ones((40, 4), chunks=(1, 4)).map_blocks(np.add, 3) + 1).sum()

    monkeypatch.setattr(pipeline, "find_candidates", must_not_run)
    x, fresh = small(), small()
    out = dedupgraph.dedup(x.__dask_graph__(), x.__dask_keys__())
    plain = optimize(fresh.__dask_graph__(), fresh.__dask_keys__())
    assert out.keys() == plain.keys()
    assert all(out[key].dependencies == plain[key].dependencies for key in plain)


def test_the_layers_are_not_trusted_after_another_optimizer():
    import dask.array as da
    from dask._task_spec import Task, TaskRef
    from dask.array.optimization import optimize

    from dedupgraph.routes.config import Deduplicator

    m = Mapper()

    def adds_large_values(dsk, keys, **kwargs):  # a user's optimizer may put large values in tasks
        out = dict(optimize(dsk, keys, **kwargs))
        return {**out, **{(key, "m"): Task((key, "m"), uses_mapper, TaskRef(key), m) for key in out}}

    x = da.ones((8, 4), chunks=(1, 4)) + 1
    out = Deduplicator(base=adds_large_values)(x.__dask_graph__(), x.__dask_keys__())
    assert len(hoisted_keys(out)) == 1
