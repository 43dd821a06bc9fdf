"""Smoke run of the design-choice benchmark at tiny sizes: behaviour only, no timings compared."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dedupgraph.benchmarks.design import MEASUREMENTS, measure

SCALE = 0.02
WITHOUT_CLUSTER = [name for name, (_, needs_cluster) in MEASUREMENTS.items() if not needs_cluster]
WITH_CLUSTER = [name for name, (_, needs_cluster) in MEASUREMENTS.items() if needs_cluster]


def assert_measured(row, name):
    assert row.name == name and row.module and row.measurement and row.instead and row.old
    assert row.alternative is not None and row.chosen is not None
    for figure in (row.alternative, row.chosen):
        assert figure.runs and all(run > 0 for run in figure.runs), figure
        assert figure.text().startswith(figure.label)
    assert row.ratio is not None and row.ratio > 0


@pytest.mark.parametrize("name", WITHOUT_CLUSTER)
def test_each_measurement_runs_at_a_tiny_size(name):
    assert_measured(measure(name, repeat=1, scale=SCALE), name)


def test_both_ways_of_rebuilding_a_frame_differ_by_one_alias_per_partition():
    row = measure("frames", repeat=1, scale=SCALE)
    partitions = int(3000 * SCALE)
    assert row.chosen.runs == (2 * partitions + 1,)  # from_pandas and map_partitions per partition, one hoisted key
    assert row.alternative.runs == (3 * partitions + 1,)


def test_every_run_counts_and_orders_alternate():
    row = measure("delayed", repeat=2, scale=SCALE)
    assert len(row.alternative.runs) == len(row.chosen.runs) == 2


@pytest.mark.parametrize("name", WITH_CLUSTER)
def test_cluster_measurements_say_so_without_a_cluster(name):
    row = measure(name, repeat=1, scale=SCALE)
    assert row.alternative is None and row.chosen is None and row.ratio is None
    assert "--cluster" in row.notes and row.old


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pull measures POSIX shared memory: Linux only")
@pytest.mark.parametrize("name", WITH_CLUSTER)
def test_cluster_measurements_run_at_a_tiny_size(name):
    assert_measured(measure(name, repeat=1, scale=SCALE, cluster=True), name)


def test_command_line_prints_one_table_with_a_row_per_measurement():
    out = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.design", "--repeat", "1", "--scale", str(SCALE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("| name |") and set(lines[1]) == {"|", "-"}
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    assert [row[0] for row in cells] == list(MEASUREMENTS)
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    assert all(len(row) == len(header) for row in cells)
    not_taken, ours = header.index("the way not taken"), header.index("the code's way")
    for row in cells:
        if row[0] in WITHOUT_CLUSTER:
            assert row[not_taken] and row[ours], row
        else:
            assert not row[not_taken] and "--cluster" in row[-1], row


def test_only_runs_one_measurement():
    out = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.design", "--repeat", "1", "--scale", str(SCALE), "--only", "scatter"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert [line.split("|")[1].strip() for line in out.strip().splitlines()[2:]] == ["scatter"]
