"""Hoisting broadcast arguments in Blockwise layers: the same graph as the pass after optimizing, or no hoist."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from dask.array.optimization import optimize
from dask.highlevelgraph import HighLevelGraph

import dedupgraph
import dedupgraph.core.layer_hoisting as blockwise_hoist
import dedupgraph.core.pipeline as pipeline
from dedupgraph.core.pipeline import task_graph
from dedupgraph.core.layer_hoisting import hoisted_in_layers
from dedupgraph.routes.config import Deduplicator
from dedupgraph.settings import Settings

from payloads import Mapper, hoisted_keys, uses_kw, uses_mapper


def _both(build, **settings):
    """The config route's output through the layers, and through the pass after dask's optimize."""
    route = Deduplicator(base=optimize, **settings)
    x = build()
    through_layers = route(x.__dask_graph__(), x.__dask_keys__())
    x = build()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blockwise_hoist, "hoisted_in_layers", lambda *args: None)
        through_pass = route(x.__dask_graph__(), x.__dask_keys__())
    return task_graph(through_layers), task_graph(through_pass)


def _issue_example(m):
    return lambda: (da.ones((40, 4), chunks=(1, 4)).map_blocks(uses_mapper, m) + 1).sum()


def _two_layers(m):
    def build():
        x = da.ones((12, 4), chunks=(2, 4))
        return x.map_blocks(uses_mapper, m) + x.map_blocks(uses_mapper, m, 1)

    return build


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "blockwise-only"])
@pytest.mark.parametrize("example", [_issue_example, _two_layers])
def test_the_same_keys_and_dependencies_as_the_pass_after_optimizing(example, fuse):
    m = Mapper()
    with dask.config.set({"optimization.fuse.active": fuse}):
        ours, pass_ = _both(example(m))
    assert ours.keys() == pass_.keys()
    assert len(hoisted_keys(ours)) == 1
    assert {key: ours[key].dependencies for key in ours} == {key: pass_[key].dependencies for key in pass_}


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_results_are_plain_dasks(scheduler):
    m = Mapper()
    build = _two_layers(m)
    plain = build().compute(scheduler=scheduler)
    with dedupgraph.enable():
        ours = build().compute(scheduler=scheduler)
    np.testing.assert_array_equal(ours, plain)


def test_the_layer_path_rebuilds_no_task(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the pass rebuilt tasks after optimizing")

    monkeypatch.setattr(pipeline, "rewrite_graph", must_not_run)
    x = _issue_example(Mapper())()
    out = dedupgraph.dedup(x.__dask_graph__(), x.__dask_keys__())
    assert len(hoisted_keys(dict(out))) == 1


def test_the_plan_counts_the_blocks_of_each_layer():
    x = _two_layers(Mapper())()
    hoisted = hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings())
    (hoist,) = hoisted.plan.hoists.values()
    assert len(hoist.tasks) == 12  # 6 blocks in each of the two layers


def test_a_large_keyword_leaves_it_to_the_pass():
    m = Mapper()
    x = da.ones((8, 4), chunks=(1, 4)).map_blocks(uses_mapper, m, offset=0).map_blocks(uses_kw, mapper=m)
    assert hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings()) is None
    out = dedupgraph.dedup(x.__dask_graph__(), x.__dask_keys__())
    assert len(hoisted_keys(dict(out))) == 1  # the pass hoists both positions into one key


def _add_first(block, table):
    return block + table[0]


def test_equal_copies_kept_apart_leave_it_to_the_pass():
    big_a, big_b = np.zeros(20_000), np.zeros(20_000)  # equal, distinct, writable: kept apart by default
    x = da.ones((8, 4), chunks=(1, 4))
    y = x.map_blocks(_add_first, big_a, name="a") + x.map_blocks(_add_first, big_b, name="b")
    assert hoisted_in_layers(y.__dask_graph__(), y.__dask_keys__(), Settings()) is None
    assert hoisted_in_layers(y.__dask_graph__(), y.__dask_keys__(), Settings(merge_equal="always"))


@pytest.mark.parametrize("min_count", [1, 2])
def test_a_task_plain_dask_fuses_with_its_one_dependency_leaves_it_to_the_pass(min_count):
    m = Mapper()

    def build():
        # each map_blocks task has one dependency, a rechunk task with no other dependent:
        # plain dask fuses the two (and renames the key); with the hoisted key as a second
        # dependency it would not
        return da.ones((8, 4), chunks=(2, 4)).rechunk((1, 4)).map_blocks(uses_mapper, m)

    ours, pass_ = _both(build, min_count=min_count)
    assert ours.keys() == pass_.keys()
    assert len(hoisted_keys(ours)) == 1


def test_a_root_layer_that_fuse_roots_could_join_leaves_it_to_the_pass():
    m = Mapper()

    def build():
        name = "root-literal"
        layer = {(name, 0): np.ones(4)}  # a materialized root: no dependencies, one dependent
        root = da.Array(HighLevelGraph.from_collections(name, layer), name, chunks=((4,),), dtype=float)
        return root.map_blocks(uses_mapper, m)

    x = build()
    assert hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings(min_count=1)) is None
    ours, pass_ = _both(build, min_count=1)
    assert ours.keys() == pass_.keys()


def test_culled_to_fewer_carriers_than_min_count_the_pass_decides():
    m = Mapper()
    build = lambda: da.ones((8, 4), chunks=(1, 4)).map_blocks(uses_mapper, m)[:1]  # noqa: E731
    x = build()
    assert hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings()) is not None  # 8 blocks before culling
    ours, pass_ = _both(build)
    assert ours.keys() == pass_.keys()
    assert hoisted_keys(ours) == []  # one carrying task left: single use, inline


def test_annotations_of_the_layers_are_kept():
    m = Mapper()
    with dask.annotate(retries=2):
        x = da.ones((8, 4), chunks=(1, 4)).map_blocks(uses_mapper, m)
    hoisted = hoisted_in_layers(x.__dask_graph__(), x.__dask_keys__(), Settings())
    layer = hoisted.graph.layers[x.name]
    assert layer.annotations == {"retries": 2}
    (key,) = (h.key for h in hoisted.plan.hoists.values())
    assert hoisted.graph.layers[key].annotations is None  # the hoisted key is data: any worker may hold it


def test_objects_kept_inline_or_excluded_stay_inline():
    kept = dedupgraph.keep_inline(Mapper())
    build = lambda: da.ones((8, 4), chunks=(1, 4)).map_blocks(uses_mapper, kept)  # noqa: E731
    ours, pass_ = _both(build)
    assert ours.keys() == pass_.keys() and hoisted_keys(ours) == []
    ours, pass_ = _both(_issue_example(Mapper()), exclude=["payloads.Mapper"])
    assert ours.keys() == pass_.keys() and hoisted_keys(ours) == []


class Counted:
    """Large when pickled; counts its pickles."""

    pickles = 0

    def __init__(self) -> None:
        self.payload = b"x" * 100_000

    def __reduce__(self):
        type(self).pickles += 1
        return (_rebuild_counted, (self.payload,))


def _rebuild_counted(payload: bytes) -> Counted:
    obj = Counted.__new__(Counted)
    obj.payload = payload
    return obj


def _uses_counted(block, obj=None, kw=None):
    return block


@pytest.mark.parametrize("where", ["argument", "keyword"], ids=["through-layers", "through-pass"])
def test_each_object_is_pickled_once_per_call(where):
    obj = Counted()
    x = da.ones((8, 4), chunks=(1, 4))
    x = x.map_blocks(_uses_counted, obj) if where == "argument" else x.map_blocks(_uses_counted, kw=obj)
    Counted.pickles = 0
    out = dedupgraph.dedup(x.__dask_graph__(), x.__dask_keys__())
    assert len(hoisted_keys(dict(out))) == 1
    assert Counted.pickles == 1


def test_a_failure_in_the_layers_falls_back_to_the_pass(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("bug in the layer hoist")

    monkeypatch.setattr(blockwise_hoist, "find_candidates", broken)
    build = _issue_example(Mapper())
    expected = build().compute(scheduler="sync")
    with dedupgraph.enable():
        assert build().compute(scheduler="sync") == expected
    x = build()
    out = dedupgraph.dedup(x.__dask_graph__(), x.__dask_keys__())
    assert len(hoisted_keys(dict(out))) == 1  # the pass, after dask's optimize
    assert any("hoisting in the layers failed" in r.message and r.levelname == "WARNING" for r in caplog.records)
