"""dedupgraph.inspect: what is duplicated, where it sits, what the settings would do; nothing changed."""

from __future__ import annotations

from dataclasses import asdict

import logging
import re

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed

import dedupgraph
from dedupgraph.tools.report import Report

from payloads import CASES, N_CHUNKS, Mapper, Unpicklable, case_settings, hoisted_keys, optimized_graph, uses_mapper

# Where each case of payloads.CASES carries its object, as the report names it.
WHERE = {
    "map_blocks-arg": "fused subgraph",
    "map_blocks-kwarg": "fused subgraph",
    "bound-method-fused": "fused subgraph (bound method)",
    "callable-instance": "fused subgraph",
    "partial": "fused subgraph (partial)",
    "closure": "fused subgraph (closure)",
    "delayed-arg": "positional argument",
    "delayed-kwarg": "keyword argument",
    "delayed-method": "function (bound method)",
    "delayed-plain-list": "nested container",
    "delayed-plain-dict": "nested container",
    "delayed-List-task": "nested container",
    "delayed-Dict-task": "nested container",
    "delayed-Tuple-task": "nested container",
    "delayed-Set-task": "nested container",
    "delayed-equal-copies": "positional argument",
    "bag-map": "fused subgraph",
    "bag-map-partitions-sum": "fused subgraph",
}


def big_rows(report: Report):
    return [r for r in report.rows if r.nbytes and r.nbytes > 200_000]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_position_is_reported_with_the_key_the_pass_gives(case):
    coll = CASES[case](Mapper())
    report = dedupgraph.inspect(coll, **case_settings(case))
    [row] = big_rows(report)
    assert row.where == (WHERE[case],)
    assert row.tasks == N_CHUNKS and row.hoisted and row.reason is None
    assert row.saved_bytes == row.nbytes * (N_CHUNKS - 1)
    with dedupgraph.enable(**case_settings(case)):
        assert [row.key] == hoisted_keys(optimized_graph(coll))


def test_a_top_level_argument_and_a_fused_input():
    m = Mapper()
    fused = da.zeros((8, 10), chunks=(1, 10)).map_blocks(uses_mapper, m, meta=np.array(()))
    [row] = big_rows(dedupgraph.inspect(fused))
    assert row.where == ("fused subgraph input",) and row.label == "Mapper" and row.type == "payloads.Mapper"


def test_a_dataframe_and_an_array_together():
    m = Mapper()
    df = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=8)
    series = df.x.map_partitions(uses_mapper, m, meta=df.x._meta)
    arr = da.arange(12, chunks=3).map_blocks(uses_mapper, m)
    report = dedupgraph.inspect(series, {"arr": arr})
    [row] = big_rows(report)  # one content, carried by the tasks of both
    assert row.tasks == 8 + 4 and row.hoisted


def test_reasons_for_leaving_objects_inline():
    keep = dedupgraph.keep_inline(Mapper(30_001))
    unpicklable = Unpicklable()
    colls = [
        [delayed(uses_mapper)(i, shared) for shared in [Mapper(30_002)] for i in range(3)],  # hoisted
        delayed(uses_mapper)(0, Mapper(30_003)),  # single use
        [delayed(uses_mapper)(i, keep) for i in range(3)],  # excluded: marked
        [delayed(lambda i, u: i)(i, unpicklable) for i in range(4)],
        [delayed(np.sum)(medium) for medium in [np.arange(2_000)] for _ in range(5)],  # 16 KB, 5 tasks: pays
        [delayed(np.max)(small) for small in [np.arange(250)] for _ in range(5)],  # 2 KB: below floor-bytes
        [delayed(np.min)(costly) for costly in [np.arange(750)] for _ in range(2)],  # 6 KB, 2 tasks: below cost
    ]
    report = dedupgraph.inspect(*colls)
    by_reason = {r.reason: r for r in report.rows if r.label == "Mapper" or r.reason is not None}
    assert by_reason[None].label == "Mapper" and by_reason[None].tasks == 3
    assert by_reason["single use"].tasks == 1 and by_reason["single use"].saved_bytes == 0
    assert by_reason["excluded"].tasks == 3 and by_reason["excluded"].nbytes > 200_000
    assert by_reason["unpicklable"].tasks == 4 and by_reason["unpicklable"].nbytes is None
    assert by_reason["below floor-bytes"].tasks == 5 and by_reason["below floor-bytes"].nbytes < 4096
    below_cost = by_reason["saving below cost"]
    assert below_cost.tasks == 2 and below_cost.label == "ndarray" and below_cost.saved_bytes > 0
    assert [(r.label, r.tasks) for r in report.rows if r.hoisted] == [("Mapper", 3), ("ndarray", 5)]
    assert report.summary.objects == 2
    assert "min-bytes auto (from floor-bytes 4.00 kiB" in report.totals()
    # the same graph under other settings
    strict = dedupgraph.inspect(*colls, min_count=4, exclude=["payloads.Mapper"], min_bytes="8 KiB")
    reasons = {(r.label, (r.nbytes or 0) > 8192, r.reason) for r in strict.rows}
    assert ("Mapper", True, "excluded") in reasons and ("ndarray", True, None) in reasons
    assert ("ndarray", False, "below min-bytes") in reasons  # a pinned size: no cost rule
    assert "With min-bytes 8.00 kiB, min-count 4:" in strict.totals()
    few = [r for r in dedupgraph.inspect(*colls, min_count=4).rows if r.tasks == 3 and r.reason != "excluded"]
    assert [r.reason for r in few] == ["below min-count"]


def test_nothing_duplicated():
    report = dedupgraph.inspect([delayed(sum)([i, 1]) for i in range(3)], db.from_sequence(range(4)).map(str))
    assert report.rows == () and report.summary.objects == 0 and report.duplicated_bytes == 0
    assert "nothing duplicated" in str(report) and "would hoist nothing" in str(report)
    assert report.to_pandas().empty
    assert "<table>" in report._repr_html_()
    assert dedupgraph.inspect(1, "not a collection").tasks == 0


def test_text_html_and_pandas_forms():
    m = Mapper()
    report = dedupgraph.inspect([delayed(uses_mapper)(i, m) for i in range(5)], [delayed(lambda u: 1)(Unpicklable())] * 2)
    text = str(report)
    assert text == repr(report)
    header, first, *_ = text.splitlines()
    assert header.split() == ["object", "size", "tasks", "where", "saves", "hoisted"]
    assert re.match(r"Mapper +23\d\.\d\d kiB +5 +positional argument +0\.9\d MiB +yes$", first)
    assert "1 object listed" not in text and "2 objects listed, carried by 6 of 6 tasks" in text
    html = report._repr_html_()
    assert html.count("<tr>") == 1 + len(report.rows) + 1 and "payloads.Mapper" in html and "no: unpicklable" in html
    frame = report.to_pandas()
    assert list(frame.columns) == [
        "label", "type", "nbytes", "tasks", "where", "saved_bytes", "hoisted", "reason", "key", "copies", "needs"
    ]
    assert frame.loc[0, "key"].startswith("dedup-Mapper-") and frame.loc[0, "saved_bytes"] == 4 * frame.loc[0, "nbytes"]
    assert pd.isna(frame.loc[1, "nbytes"]) and frame["nbytes"].dtype == "Int64"
    assert frame.attrs["summary"]["objects"] == 1 and frame.attrs["tasks"] == 6


def test_long_reports_print_their_largest_rows():
    colls = [[delayed(uses_mapper)(i, m) for m in [Mapper(30_000 + n)] for i in range(2)] for n in range(35)]
    report = dedupgraph.inspect(*colls)
    assert len(report.rows) == 35
    assert "... and 5 more rows (report.to_pandas() has them all)" in str(report)
    assert len(report.to_pandas()) == 35


def test_equal_copies_kept_apart_are_shown_with_what_merging_would_save(caplog):
    copies = [Mapper(30_011) for _ in range(4)]  # a model loaded once per task
    colls = [delayed(uses_mapper)(i, m) for i, m in enumerate(copies)]
    report = dedupgraph.inspect(colls)
    rows = big_rows(report)
    assert len(rows) == 4 and {(r.tasks, r.hoisted, r.reason, r.copies) for r in rows} == {(1, False, "single use", 4)}
    assert report.summary.objects == 0
    [kept] = report.apart
    assert (kept.label, kept.copies, kept.merge_saves) == ("Mapper", 4, 3 * rows[0].nbytes)
    assert "Also kept 4 equal copies of Mapper" in str(report) and "merging them would save" in str(report)
    assert report.to_pandas().attrs["apart"] == [asdict(kept)]
    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    with dedupgraph.enable():
        dask.compute(*colls, scheduler="sync")
    assert kept.message("immutable") in [r.getMessage() for r in caplog.records]
    merged = dedupgraph.inspect(colls, merge_equal="always")
    assert merged.summary.objects == 1 and merged.apart == ()


def test_inspect_changes_nothing():
    m = Mapper()
    arr = da.arange(16, chunks=2).map_blocks(uses_mapper, m)
    ds = [delayed(uses_mapper)(i, m) for i in range(4)]
    before = (dict(arr.__dask_graph__()), [dict(d.__dask_graph__()) for d in ds])
    expected = dask.compute(arr, *ds, scheduler="sync")
    dedupgraph.inspect(arr, ds)
    assert before == (dict(arr.__dask_graph__()), [dict(d.__dask_graph__()) for d in ds])
    got = dask.compute(arr, *ds, scheduler="sync")
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


def test_the_info_line_and_the_report_agree(caplog):
    m = Mapper()
    arr = (da.zeros((30, 10), chunks=(1, 10)).map_blocks(uses_mapper, m, meta=np.array(())) + 1).sum()
    ds = [delayed(uses_mapper)(i, shared) for shared in [Mapper(30_010)] for i in range(7)]
    caplog.set_level(logging.INFO, logger="dedupgraph")
    with dedupgraph.enable():
        dask.compute(arr, scheduler="sync")
        dask.compute(*ds, scheduler="sync")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hoisted")]
    assert lines == [dedupgraph.inspect(arr).summary.message(), dedupgraph.inspect(ds).summary.message()]
    assert lines[0].startswith("hoisted 1 object (") and "shared by 30 tasks" in lines[0]


def test_inspect_with_the_pass_on_reports_the_graph_before_it():
    m = Mapper()
    ds = [delayed(uses_mapper)(i, m) for i in range(3)]
    with dedupgraph.enable():
        on = dedupgraph.inspect(ds)
    assert on == dedupgraph.inspect(ds) and on.summary.objects == 1


def test_invalid_settings_name_the_setting():
    with pytest.raises(ValueError, match="min-count"):
        dedupgraph.inspect(delayed(sum)([1]), min_count=0)


ROUTE_NOTE = "* in DataFrame or array-expr tasks: needs the scheduler route (distributed) or dedupgraph.deduplicate()"


def test_dataframes_say_which_route_hoists_them():
    m = Mapper()
    df = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=8)
    series = df.x.map_partitions(uses_mapper, m, meta=df.x._meta)
    report = dedupgraph.inspect(series)
    [row] = big_rows(report)
    assert row.hoisted and row.needs == "the scheduler route (distributed) or dedupgraph.deduplicate()"
    text = str(report)
    assert re.search(r"Mapper .* yes\*$", text.splitlines()[1]) and ROUTE_NOTE in text
    assert ROUTE_NOTE in report._repr_html_() and report.to_pandas().loc[0, "needs"] == row.needs
    # with an array: the content is one row, and its DataFrame tasks still need the route
    arr = da.arange(12, chunks=3).map_blocks(uses_mapper, m)
    [both] = big_rows(dedupgraph.inspect(series, arr))
    assert both.tasks == 8 + 4 and both.needs == row.needs
    # arrays, delayed values and bags alone: enable() hoists them, nothing to say
    alone = dedupgraph.inspect(arr, [delayed(uses_mapper)(i, m) for i in range(3)])
    assert [r.needs for r in alone.rows] == [None] and "*" not in str(alone)


def test_array_expr_arrays_say_which_route_hoists_them():
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import dask.array as da
        import dedupgraph
        from payloads import Mapper, uses_mapper

        assert type(da.ones(2)).__module__.startswith("dask.array._array_expr"), type(da.ones(2))
        report = dedupgraph.inspect(da.arange(40, chunks=4).map_blocks(uses_mapper, Mapper()))
        [row] = [r for r in report.rows if r.label == "Mapper"]
        print(row.hoisted, row.needs)
        print(str(report).splitlines()[-1])
        """
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "DASK_ARRAY__QUERY_PLANNING": "True", "PYTHONPATH": tests}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "True the scheduler route (distributed) or dedupgraph.deduplicate()",
        ROUTE_NOTE + "; enable() alone covers arrays, delayed values and bags.",
    ]
