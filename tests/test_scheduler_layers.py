"""The scheduler route hoisting in the layers: plain dask's keys, dependencies and priorities, and a fallback to the pass."""

from __future__ import annotations

import inspect
import logging

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import dask.order
import numpy as np
import pandas as pd
import pytest
from dask.base import collections_to_expr
from dask.core import flatten
from dask.local import get_sync

from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.core.layer_hoisting import LayerHoisting, installed
from dedupgraph.routes.distributed.submissions import Route, Submission
from dedupgraph.settings import Settings

from payloads import Mapper

OBJ = Mapper(30_000)


def add_len(block, m):
    return block + len(m.s) % 7


def scaled(block, m, factor):
    return block * factor + len(m.s) % 7


# name -> (build() -> collection, whether the layers do all the pass would)
GRAPHS = {
    "map_blocks-then-sum": (lambda: (da.ones((40, 4), chunks=(1, 4)).map_blocks(add_len, OBJ) + 1).sum(), True),
    "two-arrays-added": (
        lambda: da.ones((12, 4), chunks=(1, 4)).map_blocks(add_len, OBJ) + da.zeros((12, 4), chunks=(1, 4)).map_blocks(add_len, OBJ),
        True,
    ),
    "map_blocks-then-cumsum": (lambda: da.ones((40,), chunks=4).map_blocks(add_len, OBJ).cumsum(axis=0), True),
    # fusion could change, or a layer also depends on another: the pass after dask's optimizer
    "rechunk-then-map_blocks": (lambda: da.ones((40, 4), chunks=(4, 4)).rechunk((1, 4)).map_blocks(add_len, OBJ), False),
    "delayed-argument": (
        lambda: da.ones((12, 4), chunks=(1, 4)).map_blocks(scaled, OBJ, dask.delayed(float)(2.0), dtype=float),
        False,
    ),
    "blockwise-of-two-arrays": (
        lambda: da.blockwise(scaled, "ij", da.ones((20, 20), chunks=5), "ij", OBJ, None, da.ones((20, 20), chunks=5).T, "ij", dtype=float),
        False,
    ),
}


def _original():
    import distributed.scheduler

    return inspect.unwrap(distributed.scheduler._materialize_graph)


class _LayerHoists(list):
    """The layer hoistings the route installed that hoisted: truthy once one did."""

    def __bool__(self):
        return any(hoisting is not None and hoisting.plans for hoisting in self)


def _layer_hoists(monkeypatch):
    import dedupgraph.routes.distributed.submissions as scheduler_route

    seen = _LayerHoists()
    install = scheduler_route.installed
    monkeypatch.setattr(scheduler_route, "installed", lambda *a: seen.append(install(*a)) or seen[-1])
    return seen


def _sent(coll, finalize):
    """The expression ``Client.compute`` (``finalize``) or ``Client.persist`` sends, as the scheduler unpickles it."""
    from distributed.protocol import deserialize, serialize, to_serialize

    expr = collections_to_expr([coll]).optimize()
    header, frames = serialize(to_serialize(expr.finalize_compute() if finalize else expr), on_error="raise")
    return lambda: deserialize(header, frames)


@pytest.mark.parametrize("finalize", [False, True], ids=["persist", "compute"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_plain_keys_dependencies_and_priorities(name, finalize, monkeypatch):
    build, in_layers = GRAPHS[name]
    sent = _sent(build(), finalize)
    plain, _ = _original()(sent(), False)
    calls = _layer_hoists(monkeypatch)

    submission = Submission(ordering={})
    routed, _ = Route().handle(_original(), sent(), False, submission)

    assert bool(calls) is in_layers
    hoisted = set(routed) - set(plain)
    assert len(hoisted) == 1 and set(routed) - hoisted == set(plain)
    assert set(deduplicate_graph(plain, Settings())) == set(routed)  # what the pass would make
    for key, node in plain.items():
        assert routed[key].dependencies - hoisted == node.dependencies
    priorities = dask.order.order(plain)
    assert {key: submission.ordering[key] for key in plain} == priorities
    assert all(submission.ordering[key] < min(priorities.values()) for key in hoisted)
    keys = list(plain) if finalize else [k for k in plain if not any(k in n.dependencies for n in plain.values())]
    for got, want in zip(get_sync(routed, keys), get_sync(plain, keys)):
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_arrays_persisted_together_share_one_key_hoisted_in_their_layers(monkeypatch):
    from distributed.protocol import deserialize, serialize, to_serialize

    first = da.ones((12, 4), chunks=(1, 4)).map_blocks(add_len, OBJ)
    second = (da.zeros((12, 4), chunks=(1, 4)).map_blocks(add_len, OBJ) * 2).sum()
    header, frames = serialize(to_serialize(collections_to_expr([first, second]).optimize()), on_error="raise")
    plain, _ = _original()(deserialize(header, frames), False)
    calls = _layer_hoists(monkeypatch)
    submission = Submission(ordering={})
    routed, _ = Route().handle(_original(), deserialize(header, frames), False, submission)
    hoisted = set(routed) - set(plain)
    assert calls and len(hoisted) == 1  # one group of both graphs, one optimizer call
    assert all(routed[key].dependencies - hoisted == node.dependencies for key, node in plain.items())
    assert {key: submission.ordering[key] for key in plain} == dask.order.order(plain)


def test_one_info_line_and_the_global_annotations_stay_off_the_hoisted_key(caplog):
    caplog.set_level(logging.INFO, logger="dedupgraph")
    sent = _sent(GRAPHS["map_blocks-then-sum"][0](), False)
    submission = Submission(ordering={}, annotations={"retries": 2})
    routed, annotations = Route().handle(_original(), sent(), False, submission)
    hoisted = [key for key in routed if str(key).startswith("dedup-")]
    assert len(hoisted) == 1
    assert annotations["retries"] == {key: 2 for key in routed if key not in hoisted}
    assert submission.annotations == {}  # distributed applies none globally now
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("hoisted")] == ["hoisted 1 object"]


def test_a_failure_while_hoisting_in_the_layers_falls_back_to_the_pass_with_one_warning(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("dedupgraph.core.layer_hoisting.hoisted_in_layers", broken)
    sent = _sent(GRAPHS["map_blocks-then-sum"][0](), False)
    plain, _ = _original()(sent(), False)
    submission = Submission(ordering={})
    routed, _ = Route().handle(_original(), sent(), False, submission)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hoisting in the layers failed" in warnings[0].getMessage()
    assert set(routed) == set(deduplicate_graph(plain, Settings()))  # the pass ran
    assert {key: submission.ordering[key] for key in plain} == dask.order.order(plain)


def test_only_one_legacy_graph_with_the_array_optimizer_is_hoisted_in_its_layers():
    settings = Settings()
    memo = FingerprintMemo.for_pass(settings)
    arr = da.ones((8, 4), chunks=(1, 4)).map_blocks(add_len, OBJ)
    bag = db.from_sequence(range(8), npartitions=8).map(lambda x, m: x, OBJ)
    frame = dd.from_pandas(pd.DataFrame({"x": range(8)}), npartitions=4).map_partitions(lambda p, m: p, OBJ)
    assert isinstance(installed(collections_to_expr([arr]).optimize(), settings, memo), LayerHoisting)
    assert installed(collections_to_expr([bag]).optimize(), settings, memo) is None  # bag's optimizer
    assert installed(collections_to_expr([arr, bag]).optimize(), settings, memo) is None  # two graphs
    assert installed(collections_to_expr([frame]).optimize(), settings, memo) is None  # dask-expr


def test_a_declined_call_leaves_the_graph_to_the_pass():
    from dask.array.optimization import optimize

    settings = Settings()
    hoisting = LayerHoisting(optimize, settings, FingerprintMemo.for_pass(settings))
    x = da.ones((8, 4), chunks=(4, 4)).rechunk((1, 4)).map_blocks(add_len, OBJ)
    keys = x.__dask_keys__()
    out = hoisting(x.__dask_graph__(), keys)
    assert not hoisting.applied and hoisting.declined == 1 and not hoisting.plans
    assert set(dict(out)) == set(dict(optimize(x.__dask_graph__(), keys)))
    assert list(flatten(keys))[0] in dict(out)
