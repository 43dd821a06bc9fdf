"""Stages 2 and 3: plans become keys, tasks reference them, nothing else changes."""

from __future__ import annotations

import logging

import dask
from dask._task_spec import DataNode, TaskRef
from dask import delayed

import dedupgraph
from dedupgraph.core.candidates import find_candidates
from dedupgraph.core.fingerprint import FingerprintMemo
from dedupgraph.core.plan import hoisted_key, plan_hoists
from dedupgraph.core.rewrite import rewrite_graph
from dedupgraph.settings import Settings

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper


def _plan(graph, **settings):
    s = Settings(**settings)
    found = find_candidates(graph, FingerprintMemo(s.smallest_hoisted))
    return found, plan_hoists(found, s)


def test_plan_respects_min_count_and_reports_savings():
    m = Mapper()
    graph = optimized_graph(*[delayed(uses_mapper)(i, m) for i in range(5)])
    found, plan = _plan(graph)
    (hoist,) = plan.hoists.values()
    assert hoist.key == hoisted_key(hoist.fingerprint)
    assert len(hoist.tasks) == 5
    assert hoist.saved_bytes == 4 * hoist.fingerprint.nbytes
    assert not _plan(graph, min_count=6)[1]


def test_rewrite_adds_one_data_node():
    m = Mapper()
    graph = optimized_graph(*[delayed(uses_mapper)(i, m) for i in range(5)])
    found, plan = _plan(graph)
    out = rewrite_graph(graph, plan, found)
    (key,) = hoisted_keys(out)
    assert isinstance(out[key], DataNode) and out[key].value is m
    assert all(key in out[k].dependencies for k in graph)


def test_rewrite_with_given_references_adds_no_node():
    m = Mapper()
    graph = optimized_graph(*[delayed(uses_mapper)(i, m) for i in range(3)])
    found, plan = _plan(graph)
    refs = {digest: TaskRef("elsewhere") for digest in plan.hoists}
    out = rewrite_graph(graph, plan, found, refs)
    assert set(out) == set(graph)
    assert all(out[k].dependencies == {"elsewhere"} for k in graph)
    keys = list(graph)
    assert dask.get({**out, "elsewhere": DataNode("elsewhere", m)}, keys) == dask.get(graph, keys)


def test_info_line_and_dry_run(caplog):
    m = Mapper()
    colls = [delayed(uses_mapper)(i, m) for i in range(4)]
    caplog.set_level(logging.INFO, logger="dedupgraph")
    plain = optimized_graph(*colls)
    with dedupgraph.enable(dry_run=True):
        dry = optimized_graph(*colls)
        assert dask.compute(*colls) == tuple(uses_mapper(i, m) for i in range(4))
    assert hoisted_keys(dry) == [] and set(dry) == set(plain)
    (line, *_) = [r.getMessage() for r in caplog.records]
    assert line.startswith("dry run: would hoist 1 object (")
    assert "Mapper) shared by 4 tasks" in line and "would be saved" in line
    caplog.clear()
    with dedupgraph.enable():
        optimized_graph(*colls)
    (line,) = {r.getMessage() for r in caplog.records}
    assert line.startswith("hoisted 1 object (") and line.endswith("of task payload saved")
