"""Smoke run of the pass-overhead benchmark at a tiny size: behaviour only, no timings asserted."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dedupgraph
from dedupgraph.benchmarks.overhead import SCENARIOS, build, measure


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_measure_and_hoist_what_they_should(scenario):
    row = measure(scenario, 500, repeat=1)
    assert row.tasks >= 400 and row.dask_s > 0 and row.pass_s > 0
    expected = {"none": 0, "shared": 1, "distinct": 100 // 10, "medium": 0}
    assert row.hoisted == expected[scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_results_with_and_without_the_pass_agree(scenario):
    y = build(scenario, 500)
    with dedupgraph.enable():
        got = y.compute()
    np.testing.assert_allclose(got, y.compute())


def test_command_line_prints_a_row_per_scenario():
    out = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.overhead", "--tasks", "500", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert {line.split("|")[1].strip() for line in out.splitlines()[2:]} == set(SCENARIOS)


def test_the_client_pickling_measure_times_each_way_on_each_graph():
    from dedupgraph.benchmarks.overhead import client_pickling

    rows = client_pickling(200, repeat=1)
    assert [row["graph"] for row in rows] == ["delayed, 200 tasks", "array, 200 tasks, one shared Mapper"]
    ways = ("distributed", "sparing, kept type absent", "sparing, own object kept")
    assert all(row[way] > 0 for row in rows for way in ways)


@pytest.mark.parametrize("scenario", ["none", "shared"])
def test_the_scheduler_routes_own_work_is_timed_by_the_benchmark_alone(scenario):
    # the route keeps no accounts: the benchmark times what is not the route's
    from dedupgraph.benchmarks import scheduler_cost

    row = scheduler_cost.measure("array", scenario, 2000, repeat=1)
    assert row.hoisted == (scenario == "shared")
    assert 0 < row.own_share < 1


def test_the_mutation_check_benchmark_times_the_seed_scenario_checked_and_not():
    from dedupgraph.benchmarks import mutation_check

    row = mutation_check.measure("threads", 20, repeat=1)
    assert row.checked == 20 and row.off_s > 0 and row.on_s > 0
    assert 0 < mutation_check.digest_s(mutation_check.Mapper(), repeat=3) < 1
    out = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.mutation_check", "--quick", "--places", "threads"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert out.splitlines()[2].startswith("| threads | 40 | 40 |") and "one digest of the seed's Mapper" in out
