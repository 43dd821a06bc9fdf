"""The seed scenario on a real LocalCluster, memory from MemorySampler on worker processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dedupgraph.benchmarks.seed import MODES, Row, measure_mode, verdict

CHUNKS = (400, 2400)


@pytest.fixture(scope="module")
def rows():
    return {mode: measure_mode(mode, CHUNKS) for mode in MODES}


def _growth(rows, mode):
    return rows[mode][-1].growth_kb_per_chunk


def test_results_are_identical_in_every_mode(rows):
    for index in range(len(CHUNKS)):
        assert len({rows[mode][index].total for mode in MODES}) == 1


def test_dedup_grows_like_manual_scatter(rows):
    dedup, scatter = _growth(rows, "dedup"), _growth(rows, "scatter")
    assert dedup <= 1.3 * scatter, (dedup, scatter)


def test_dedup_grows_at_least_8x_less_than_plain(rows):
    dedup, plain = _growth(rows, "dedup"), _growth(rows, "plain")
    # one copy per task: the 241 KB object makes plain embedding grow by ~250 KB a chunk
    assert plain > 150
    assert plain >= 8 * dedup, (plain, dedup)


def test_smoke_run_prints_every_mode():
    out = subprocess.run(
        [sys.executable, "-m", "dedupgraph.benchmarks.seed", "--quick"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    table = [line for line in out.splitlines() if line.startswith("| ") and "mode" not in line]
    assert sorted({line.split("|")[1].strip() for line in table}) == sorted(MODES)
    assert len(table) == 2 * len(MODES)
    assert [line for line in out.splitlines() if line.startswith("dedup: ") and "of manual scatter" in line]


def test_verdict_compares_dedup_with_plain_and_scatter():
    rows = [Row(mode, 2, 0, growth, 0, 0) for mode, growth in (("plain", 250.0), ("scatter", 12.0), ("dedup", 12.5))]
    assert verdict(rows) == "dedup: 12.5 KB per extra chunk, 20x below plain (250.0), 104% of manual scatter (12.0)"
    assert verdict(rows[:2]) == ""  # a mode missing: nothing to compare
