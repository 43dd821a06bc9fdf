"""The benchmark suite at its smallest size: every output produced, every mode present."""

from __future__ import annotations

import csv

from dedupgraph.benchmarks.suite import COLLECTIONS, MODES, SMOKE, run


def test_smallest_suite_writes_table_csv_and_plots(tmp_path):
    lines: list[str] = []
    report = run(SMOKE, tmp_path, lines.append)
    with (tmp_path / "cells.csv").open() as f:
        cells = list(csv.DictReader(f))
    assert {c["mode"] for c in cells} == set(MODES)
    assert {c["collection"] for c in cells} == set(COLLECTIONS)
    assert all(float(c["memory_mb"]) > 0 for c in cells)
    # every mode computed the same results (run() checks it), and reported progress per cell
    assert len([line for line in lines if line.startswith("[")]) == len(MODES) * len(COLLECTIONS)
    text = report.read_text()
    assert all(f"| {mode} |" in text for mode in MODES)
    assert "## Pass overhead" in text
    # the targets, with a verdict per collection (figures at this size are noise, not checked)
    targets = text.split("## Targets")[1].split("## Cells")[0]
    assert all(f"| {collection} | 60KB |" in targets for collection in COLLECTIONS)
    assert "- none, " in targets and "- shared, " in targets
    for name in ("memory_over_time.png", "memory_vs_chunks.png", "pass_overhead.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with (tmp_path / "overhead.csv").open() as f:
        assert {row["scenario"] for row in csv.DictReader(f)} == {"none", "shared", "distinct", "medium"}


def test_the_repeat_part_runs_at_its_smallest(tmp_path):
    from dedupgraph.benchmarks.repeat import MODES as REPEAT_MODES, Part

    lines: list[str] = []
    part = Part(sizes=(2.0,), computations=3, chunks=4, workers=1, collections=("array",), python_mb=1.0)
    table = part.run(tmp_path, lines.append)
    with (tmp_path / "repeat.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["mode"], r["number"]) for r in rows] == [
        (k, m, str(n)) for k in ("series", "python") for m in REPEAT_MODES for n in (1, 2, 3)
    ]
    assert all(r["correct"] == "True" for r in rows)
    rows = [r for r in rows if r["kind"] == "series"]
    object_bytes = 2 * 2**20
    later = {r["mode"]: int(r["sent_bytes"]) for r in rows if r["number"] == "3"}
    assert later["plain"] > 0.9 * object_bytes  # the object travels with every graph
    assert later["scatter-once"] < 0.05 * object_bytes  # only the reference does
    assert later["dedup-reuse"] < 0.05 * object_bytes  # the scheduler kept it: the graph leaves it out
    assert later["dedup"] > 0.9 * object_bytes  # nothing kept
    first_scatter = next(int(r["sent_bytes"]) for r in rows if r["mode"] == "scatter-once")
    assert first_scatter > 0.9 * object_bytes  # the scatter, counted in the first computation
    assert len(lines) == 2 * len(REPEAT_MODES) and all(f"| {mode} |" in table for mode in REPEAT_MODES)
    assert (tmp_path / "repeat.md").read_text().strip() == table
    png = tmp_path / "repeat.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
