"""check-mutation: a task that changes a hoisted object it received is named, through every route.

Each test that expects a warning uses functions of its own: the check warns
once per function and process, and the local schedulers run in this one.
The processes scheduler and the cluster's workers report to the file named
by ``DEDUPGRAPH_MUTATION_REPORT``, which their processes inherit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from dask._task_spec import _execute_subgraph
from dask.base import tokenize
from distributed import Client, LocalCluster

import dedupgraph
from dedupgraph.benchmarks.seed import Mapper as SeedMapper
from dedupgraph.benchmarks.seed import apply_mapper
from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.core.runtime import REPORT_ENV, SharedReadOnlyError, call_guarded, received
from dedupgraph.settings import Settings

from payloads import CASES, Mapper, case_settings, hoisted_keys, optimized_graph

GUARD_NAMES = ("call_guarded", "received")


class Box:
    """A mutable object that tasks receive: large to pickle, and a counter a careless function bumps."""

    def __init__(self) -> None:
        self.s = pd.Series(range(30_000))
        self.calls = 0


def counting(name: str) -> Any:
    """A function that changes the box it receives, under a name of its own (see the module doc)."""

    def count(x: Any, box: Box) -> Any:
        box.calls += 1
        return x + 1

    count.__name__ = count.__qualname__ = name
    return count


def qualified(func: Any) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def collection(kind: str, func: Any, box: Any) -> Any:
    if kind == "array":
        return da.ones((8, 4), chunks=(1, 4)).map_blocks(func, box)
    if kind == "delayed":
        return [delayed(func)(i, box) for i in range(8)]
    return db.from_sequence(range(16), npartitions=8).map(func, box)


def plain_result(coll: Any) -> Any:
    with dedupgraph.disable():
        return dask.compute(coll, scheduler="sync")[0]


def assert_same(got: Any, expected: Any) -> None:
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    else:
        assert list(got) == list(expected)


def reported(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def report(tmp_path, monkeypatch):
    path = tmp_path / "mutations.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(path))
    return path


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dedupgraph" and r.levelno == logging.WARNING]


def specs(graph: dict) -> dict:
    return {key: tokenize(node) for key, node in graph.items()}


def guarded(graph: dict) -> list[Any]:
    """The keys of the tasks that call the check, and of the fused tasks whose inner tasks do."""
    found = []
    for key, node in graph.items():
        func = getattr(node, "func", None)
        if func is call_guarded or (func is _execute_subgraph and guarded(dict(node.args[0]))):
            found.append(key)
    return found


# --- the graphs: off is today's, on keeps every key and result


@pytest.mark.parametrize("case", sorted(CASES))
def test_off_the_graphs_are_exactly_those_without_the_setting(case):
    coll = CASES[case](Mapper())
    graph = optimized_graph(coll)
    settings = case_settings(case)
    default = deduplicate_graph(graph, Settings(**settings))
    off = deduplicate_graph(graph, Settings(check_mutation=False, **settings))
    assert hoisted_keys(default) and specs(off) == specs(default)
    assert not guarded(off)
    # the config route too, by its own settings
    with dedupgraph.enable(**settings):
        by_default = optimized_graph(coll)
    with dedupgraph.enable(check_mutation=False, **settings):
        assert specs(optimized_graph(coll)) == specs(by_default)


@pytest.mark.parametrize("case", sorted(CASES))
def test_on_the_keys_and_results_are_those_of_plain_dask_and_readers_are_not_named(case, caplog, report):
    coll = CASES[case](Mapper())
    expected = plain_result(coll)
    settings = case_settings(case)
    graph = optimized_graph(coll)
    on = deduplicate_graph(graph, Settings(check_mutation=True, **settings))
    assert set(on) == set(deduplicate_graph(graph, Settings(**settings)))
    assert guarded(on)
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True, **settings):
        got = dask.compute(coll, scheduler="sync")[0]
    assert tokenize(got) == tokenize(expected)
    assert warnings_of(caplog) == [] and reported(report) == []


def test_immutable_objects_are_not_checked():
    frozen, table = np.arange(100_000.0), list(range(50_000))
    frozen.flags.writeable = False
    sums = [delayed(np.sum)(frozen, dask_key_name=f"sum-{i}") for i in range(4)]
    lens = [delayed(len)(table, dask_key_name=f"len-{i}") for i in range(2)]
    on = deduplicate_graph(optimized_graph(sums + lens), Settings(check_mutation=True))
    assert len(hoisted_keys(on)) == 2
    assert sorted(guarded(on)) == ["len-0", "len-1"]  # no task can change the read-only array


# --- naming the function that changes the object


@pytest.mark.parametrize("kind", ["array", "delayed", "bag"])
@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_names_the_function_that_changes_the_object(scheduler, kind, caplog, report):
    func = counting(f"changes_{scheduler}_{kind}")
    box = Box()
    coll = collection(kind, func, box)
    expected = plain_result(coll)
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True):
        got = dask.compute(coll, scheduler=scheduler)[0]
    assert_same(got, expected)
    lines = reported(report)
    assert lines and {(line["function"], line["type"]) for line in lines} == {(qualified(func), qualified(Box))}
    if scheduler != "processes":  # the other schedulers' tasks run in this process: one warning, all of it
        (message,) = warnings_of(caplog)
        assert qualified(func) in message and qualified(Box) in message
        assert "dedupgraph.keep_inline(obj)" in message and f"dedupgraph.enable(exclude=['{qualified(Box)}'])" in message


def test_warns_once_per_function(caplog, report):
    first, second = counting("changes_first"), counting("changes_second")
    box = Box()
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True):
        for _ in range(2):
            dask.compute(collection("delayed", first, box), collection("array", second, box), scheduler="sync")
    messages = warnings_of(caplog)
    assert len(messages) == 2 and qualified(first) in messages[0] + messages[1] and qualified(second) in messages[0] + messages[1]
    assert sorted(line["function"] for line in reported(report)) == sorted([qualified(first), qualified(second)])


def test_a_fused_task_names_the_function_that_changed_the_object_not_the_chain(caplog, report):
    changes = counting("changes_in_a_chain")
    box = Box()
    chain = da.ones((8, 4), chunks=(1, 4)).map_blocks(apply_mapper, box).map_blocks(changes, box)
    expected = plain_result(chain)
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True):
        assert_same(chain.compute(scheduler="sync"), expected)
    (message,) = warnings_of(caplog)
    assert qualified(changes) in message and "apply_mapper" not in message


def test_a_hoisted_method_that_changes_its_instance_is_named(caplog, report):
    class Counter:
        def __init__(self) -> None:
            self.table = list(range(30_000))
            self.seen = 0

        def see(self, x: int) -> int:
            self.seen += 1
            return x + len(self.table)

    counter = Counter()
    parts = [delayed(counter.see)(i) for i in range(6)]
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True):
        assert dask.compute(*parts, scheduler="sync") == tuple(i + 30_000 for i in range(6))
    (message,) = warnings_of(caplog)
    counter_type = f"{__name__}.test_a_hoisted_method_that_changes_its_instance_is_named.<locals>.Counter"
    assert f"{counter_type}.see changed the {counter_type} " in message
    # the fix that keeps a bound method inline, which the instance's mark or type does not
    assert "exclude=['builtins.method']" in message
    (unchecked,) = dedupgraph.deduplicate(parts, client=False, exclude=["builtins.method"])
    assert unchecked is parts


def test_deduplicate_checks_with_the_setting(caplog, report):
    func = counting("changes_after_deduplicate")
    box = Box()
    parts = collection("delayed", func, box)
    expected = plain_result(parts)
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    (unchecked,) = dedupgraph.deduplicate(parts, client=False)
    assert list(dask.compute(*unchecked, scheduler="sync")) == expected
    assert warnings_of(caplog) == []
    (checked,) = dedupgraph.deduplicate(parts, client=False, check_mutation=True)
    assert list(dask.compute(*checked, scheduler="threads")) == expected
    assert [line["function"] for line in reported(report)] == [qualified(func)]


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_the_seed_scenario_only_reads_and_nothing_is_reported(scheduler, caplog, report):
    mapper = SeedMapper()
    x = da.zeros((40, 10), chunks=(1, 10)).map_blocks(apply_mapper, mapper, meta=np.array(()))
    expected = plain_result(x)
    caplog.set_level(logging.WARNING, logger="dedupgraph")
    with dedupgraph.enable(check_mutation=True):
        graph = optimized_graph(x)
        np.testing.assert_array_equal(x.compute(scheduler=scheduler), expected)
    assert hoisted_keys(graph) and len(guarded(graph)) == 40
    assert warnings_of(caplog) == [] and reported(report) == []


# --- on a cluster: the pass on the scheduler, the check on the workers


def bumps_partition(part: pd.DataFrame, box: Box) -> pd.DataFrame:
    box.calls += 1
    return part + 1


def bumps_block(block: np.ndarray, box: Box) -> np.ndarray:
    box.calls += 1
    return block + 1


def test_on_a_local_cluster_the_scheduler_route_names_the_function(report):
    box, mapper = Box(), SeedMapper()
    frame = dd.from_pandas(pd.DataFrame({"a": range(16)}), npartitions=8)
    # DataFrames: only the scheduler route deduplicates them, on the scheduler
    changes = frame.map_partitions(bumps_partition, box)
    reads = da.zeros((16, 10), chunks=(1, 10)).map_blocks(apply_mapper, mapper, meta=np.array(()))
    expected_frame, expected_array = plain_result(changes), plain_result(reads)
    with dedupgraph.enable(check_mutation=True):  # LocalClusters started now run the scheduler route
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
            np.testing.assert_array_equal(reads.compute(), expected_array)
            assert reported(report) == []  # the seed's Mapper is only read
            pd.testing.assert_frame_equal(changes.compute(), expected_frame)
            (deduped,) = dedupgraph.deduplicate(da.ones((8, 4), chunks=(1, 4)).map_blocks(bumps_block, box), client=client)
            np.testing.assert_array_equal(deduped.compute(), np.full((8, 4), 2.0))
    functions = {line["function"] for line in reported(report)}
    assert functions == {qualified(bumps_partition), qualified(bumps_block)}
    assert {line["type"] for line in reported(report)} == {qualified(Box)}


# --- the runtime itself


def test_a_read_only_error_in_a_task_that_received_a_shared_object_says_so_and_chains_numpys():
    frozen = np.zeros(4)
    frozen.flags.writeable = False

    def fill(arr: np.ndarray) -> None:
        arr[0] = 1

    with pytest.raises(SharedReadOnlyError, match="read-only") as caught:
        call_guarded(received("mymodule.fill", (), (frozen,)), fill, frozen)
    assert isinstance(caught.value, ValueError) and "assignment destination is read-only" in str(caught.value.__cause__)
    assert 'share="host"' in str(caught.value) and "mymodule.fill" in str(caught.value)
    # no shared object received: numpy's own error, untouched
    with pytest.raises(ValueError, match="read-only") as plain:
        call_guarded(received("mymodule.fill", (), ()), fill, frozen)
    assert type(plain.value) is ValueError
