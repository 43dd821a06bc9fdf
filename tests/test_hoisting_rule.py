"""The cost rule (min-bytes auto): what pays is hoisted, what does not stays inline and says why; nothing is pickled for it where nothing can pay."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from distributed import Client, LocalCluster

import dedupgraph
from dedupgraph.core.candidates import find_candidates
from dedupgraph.core.fingerprint import FingerprintMemo, content_fingerprint
from dedupgraph.core.immutability import merge_policy
from dedupgraph.core.pipeline import task_graph
from dedupgraph.core.plan import DEPENDENCY_BYTES, KEY_BYTES, PAYS_FACTOR, hoisted_key, pays, plan_hoists, why_inline
from dedupgraph.core.prescan import layers_hold_nothing_large
from dedupgraph.routes.activation import SCHEDULER_PRELOAD
from dedupgraph.settings import Settings

from payloads import Mapper, hoisted_keys, optimized_graph


def lookup(i, table):
    return i + len(table)


def vocabulary(words: int) -> dict[str, int]:
    return {f"word{i:05d}": i for i in range(words)}  # about 14 bytes pickled per word


# --- the rule --------------------------------------------------------------------


def test_the_rule_weighs_what_hoisting_saves_against_what_it_adds():
    for nbytes, ntasks in [(4096, 2), (8_000, 2), (36 * 1024, 2), (6_000, 10), (5_000, 10), (4096, 4000), (2_000, 4000)]:
        saved, cost = nbytes * (ntasks - 1), ntasks * DEPENDENCY_BYTES + KEY_BYTES
        assert pays(nbytes, ntasks) == (saved >= PAYS_FACTOR * cost)
    auto = Settings()
    assert why_inline(8_000, 4000, auto) is None
    assert why_inline(8_000, 2, auto) == "saving below cost"
    assert why_inline(3_000, 4000, auto) == "below floor-bytes"  # it would pay: the floor decides
    assert why_inline(1_000_000, 1, auto) == "single use"
    assert why_inline(1_000_000, 1, Settings(min_count=1)) is None  # min-count 1: hoisted as asked
    pinned = Settings(min_bytes=4096)
    assert why_inline(8_000, 2, pinned) is None and why_inline(3_000, 4000, pinned) == "below min-bytes"


def test_auto_hoists_a_medium_object_that_many_tasks_carry_and_computes_the_same():
    table = vocabulary(600)  # ~8 KB, below the 64 KiB that dedupgraph pinned before the rule
    assert 4096 < content_fingerprint(table).nbytes < 16_000
    coll = [delayed(lookup)(i, table) for i in range(200)]
    expected = dask.compute(*coll, scheduler="sync")
    for scheduler in ("sync", "threads"):
        with dedupgraph.enable():
            assert dask.compute(*coll, scheduler=scheduler) == expected
            assert len(hoisted_keys(optimized_graph(*coll))) == 1
    with dedupgraph.enable(min_bytes="64 KiB"):  # a pinned size: the rule before
        assert hoisted_keys(optimized_graph(*coll)) == []


def test_what_does_not_pay_stays_inline_and_inspect_and_the_dry_run_say_why(caplog):
    table = vocabulary(400)  # ~6 KB: above the floor, yet 2 tasks do not pay for a key
    pair = [delayed(lookup)(i, table) for i in range(2)]
    with dedupgraph.enable():
        assert hoisted_keys(optimized_graph(*pair)) == []
    [row] = [r for r in dedupgraph.inspect(pair).rows if r.label == "dict"]
    assert (row.tasks, row.hoisted, row.reason) == (2, False, "saving below cost")
    caplog.set_level(logging.INFO, logger="dedupgraph")
    with dedupgraph.enable(dry_run=True):
        assert dask.compute(*pair, scheduler="sync") == tuple(lookup(i, table) for i in range(2))
    [line] = [r.getMessage() for r in caplog.records if "inline" in r.getMessage()]
    assert line.startswith("dry run: left dict (") and "inline: saving below cost (carried by 2 tasks; min-bytes auto" in line
    with dedupgraph.enable(min_bytes="4 KiB"):  # a pinned size hoists it, cost or not
        assert len(hoisted_keys(optimized_graph(*pair))) == 1


def test_min_count_one_hoists_a_single_use_object_from_the_floor():
    with dedupgraph.enable(min_count=1):
        assert len(hoisted_keys(optimized_graph(delayed(lookup)(0, vocabulary(600))))) == 1
        assert hoisted_keys(optimized_graph(delayed(lookup)(0, vocabulary(100)))) == []  # ~1.5 KB: below the floor


# --- settings -------------------------------------------------------------------------


def test_auto_and_floor_bytes_from_config_arguments_and_the_environment():
    assert Settings.from_config().min_bytes is None and Settings.from_config().floor_bytes == 4096
    assert Settings.from_config(min_bytes="AUTO ").min_bytes is None
    with dask.config.set({"dedupgraph.min-bytes": "32 KiB", "dedupgraph.floor-bytes": "8 KiB"}):
        s = Settings.from_config()
        assert (s.min_bytes, s.floor_bytes, s.smallest_hoisted) == (32 * 1024, 8 * 1024, 32 * 1024)
        assert Settings.from_config(min_bytes="auto").smallest_hoisted == 8 * 1024
    env = {**os.environ, "DASK_DEDUPGRAPH__MIN_BYTES": "auto", "DASK_DEDUPGRAPH__FLOOR_BYTES": "2KiB"}
    code = "import dedupgraph; s = dedupgraph.Settings.from_config(); print(s.min_bytes, s.floor_bytes, s.hoisting_rule())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 2)[:2] == ["None", "2048"] and "from floor-bytes 2.00 kiB" in out
    # what enable() sets round-trips
    assert Settings.from_config(**{k.removeprefix("dedupgraph."): v for k, v in Settings().as_config().items()}) == Settings()


@pytest.mark.parametrize(
    "overrides, named, says",
    [
        ({"min_bytes": "lots"}, "min-bytes", "or 'auto'"),
        ({"min_bytes": 1.5}, "min-bytes", "integer or 'auto'"),
        ({"floor_bytes": "auto"}, "floor-bytes", "byte string"),
        ({"floor_bytes": -1}, "floor-bytes", ">= 0"),
    ],
)
def test_bad_values_name_the_setting(overrides, named, says):
    with pytest.raises(ValueError) as info:
        Settings.from_config(**overrides)
    assert info.value.setting == named and says in str(info.value)


# --- no new cost where nothing pays ------------------------------------------------


def each_its_own(count: int) -> list:
    rng = np.random.default_rng(1)
    kinds = (lambda i: rng.random(2_500), lambda i: rng.bytes(20_000), lambda i: {j: float(i + j) for j in range(1_700)})
    return [kinds[i % 3](i) for i in range(count)]


def test_objects_that_too_few_tasks_could_carry_are_not_pickled():
    from dask._task_spec import Task

    objects = each_its_own(60)
    graph = {f"t-{i}": Task(f"t-{i}", lookup, i, obj) for i, obj in enumerate(objects)}
    counting, walking = FingerprintMemo(4096), FingerprintMemo(4096)
    merge = merge_policy("immutable")
    assert not find_candidates(graph, counting, may_merge=merge, min_carriers=2).fingerprints
    assert counting.pickled <= 1  # the function, at most: not one of the objects
    assert len(find_candidates(graph, walking, may_merge=merge).fingerprints) == 60  # without counting: all pickled
    assert walking.pickled >= 60


def test_counting_finds_what_the_walk_finds_and_gives_the_same_keys():
    from dask._task_spec import Task

    shared = Mapper(3_000)  # mutable, carried by several tasks: by identity
    blob = np.random.default_rng(2).bytes(30_000)
    equal_bytes = [bytes(blob), bytes(blob)]  # distinct objects, equal content: found by their buffers' hash
    graph = {f"t-{i}": Task(f"t-{i}", lookup, i, obj) for i, obj in enumerate(each_its_own(30))}
    graph |= {f"s-{i}": Task(f"s-{i}", lookup, i, shared) for i in range(5)}
    graph |= {f"b-{i}": Task(f"b-{i}", lookup, i, obj) for i, obj in enumerate(equal_bytes)}
    graph |= {f"big-{i}": Task(f"big-{i}", lookup, i, vocabulary(3_000)) for i in range(3)}  # equal dicts, mutable
    for merge_equal in ("immutable", "always"):
        settings = Settings(merge_equal=merge_equal, min_bytes=4096)
        plans = [
            plan_hoists(find_candidates(graph, FingerprintMemo(4096), may_merge=merge_policy(merge_equal), min_carriers=n), settings)
            for n in (1, 2)
        ]
        assert {h.key: h.tasks for h in plans[0].hoists.values()} == {h.key: h.tasks for h in plans[1].hoists.values()}
        labels = sorted(h.fingerprint.label for h in plans[1].hoists.values())
        assert labels == (["Mapper", "bytes"] if merge_equal == "immutable" else ["Mapper", "bytes", "dict"])


def test_the_prescan_reads_a_graph_of_distinct_medium_objects_without_pickling_them():
    from dask._task_spec import Task
    from dask.highlevelgraph import HighLevelGraph

    def array_of(objects, name):
        dsk = {(name, i, 0): Task((name, i, 0), lookup, i, obj) for i, obj in enumerate(objects)}
        return da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=((1,) * len(objects), (1,)), dtype="f8")

    distinct = array_of(each_its_own(30), "distinct") + 1
    memo = FingerprintMemo.for_pass(Settings())
    assert layers_hold_nothing_large(distinct.__dask_graph__(), Settings(), memo)
    assert memo.pickled <= 2  # the functions (lookup, and the +1's): none of the 30 objects
    table = vocabulary(3_000)
    twice = array_of([*each_its_own(4), table, table], "twice") + 1
    assert not layers_hold_nothing_large(twice.__dask_graph__(), Settings())
    with dedupgraph.enable():
        graph = task_graph(dask.optimize(distinct)[0].__dask_graph__())
        assert hoisted_keys(graph) == []
        assert len(hoisted_keys(optimized_graph(twice))) == 1


# --- the scheduler route ---------------------------------------------------------


def add_len(part: pd.DataFrame, table: dict) -> pd.DataFrame:
    return part.assign(y=part.x + len(table))


def test_the_scheduler_route_hoists_a_medium_object_in_dataframe_tasks():
    table = vocabulary(700)  # ~10 KB
    key = hoisted_key(content_fingerprint(table))
    frame = dd.from_pandas(pd.DataFrame({"x": np.arange(40)}), npartitions=10).map_partitions(
        add_len, table, meta={"x": "i8", "y": "i8"}
    )
    expected = frame.compute(scheduler="sync")
    with dask.config.set({"distributed.scheduler.preload": [SCHEDULER_PRELOAD]}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                held = client.persist(frame)
                pd.testing.assert_frame_equal(held.compute(), expected)
                keys = client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
                assert key in keys
                dependents = client.run_on_scheduler(
                    lambda dask_scheduler: len(dask_scheduler.tasks[key].dependents)
                )
                assert dependents == 10
