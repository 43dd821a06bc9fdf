"""The break-even benchmark at its smallest: the baseline and both modes run, only the hoisted one has a hoisted key, and its files."""

from __future__ import annotations

import pytest

from dedupgraph.benchmarks.break_even import grid, main, markdown, read_cells


def test_the_break_even_grid_runs_at_its_smallest(tmp_path):
    main(["--sizes", "2000", "--tasks", "20", "--output", str(tmp_path / "grid.csv"), "--figure", str(tmp_path / "grid.png")])
    cells = read_cells(tmp_path / "grid.csv")
    assert [(c.size, c.tasks, c.mode, c.hoisted) for c in cells] == [
        (0, 20, "inline", False),  # the baseline: an empty object
        (2000, 20, "inline", False),
        (2000, 20, "hoisted", True),
    ]
    assert all(c.persist_s > 0 for c in cells)
    assert "| 20 | 2000 |" in markdown(cells)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert grid([2_000], [20], cap=1_000) == []  # over the cap: left out


def test_one_more_dependency_is_measured_at_its_smallest(capsys):
    from dedupgraph.benchmarks.break_even import dependency_cost

    cost = dependency_cost(20, rounds=1)
    assert cost.tasks == 20 and cost.without_s > 0 and cost.with_s > 0
    assert cost.without_bytes > 0 and cost.with_bytes > 0  # what the persisted results and their tasks hold
    main(["--no-grid", "--dependency-tasks", "20", "--rounds", "1"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| tasks | traced per task") and table[2].startswith("| 20 |") and len(table) == 3


def test_the_fused_bag_shape_is_measured_at_its_smallest():
    from dedupgraph.benchmarks.break_even import bag_growth, bag_spec_bytes

    # the hoisted dependency inside dask's fused bag task: more unpickled spec per chunk than no dependency
    fused, dedup = bag_spec_bytes("fused", 200, 8), bag_spec_bytes("dedup", 200, 8)
    assert 0 < fused < dedup
    growth = bag_growth("scatter", [3, 6], 8, settle_s=0.3)
    assert isinstance(growth, float)
    with pytest.raises(SystemExit):
        main(["--no-grid", "--bag-chunks", "3"])  # a growth needs two counts
