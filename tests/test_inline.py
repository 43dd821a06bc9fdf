"""Opting out: by type with the exclude setting, per object with keep_inline."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from dask import delayed

import dedupgraph
from dedupgraph.core.fingerprint import EXCLUDED, FingerprintMemo
from dedupgraph.core.inline import InlineDict

from payloads import Mapper, hoisted_keys, optimized_graph, uses_mapper


def _mutate(mapper, i):
    # a function that must not share its argument between tasks
    mapper.calls = getattr(mapper, "calls", 0) + 1
    return mapper.calls + i


def test_exclude_by_type_keeps_every_copy_inline():
    m = Mapper()
    colls = [delayed(_mutate)(m, i) for i in range(4)]
    with dedupgraph.enable(exclude=["payloads.Mapper"]):
        assert hoisted_keys(optimized_graph(*colls)) == []
    with dedupgraph.enable(exclude=["builtins.object"]):  # matched through the MRO
        assert hoisted_keys(optimized_graph(*colls)) == []
    with dedupgraph.enable(exclude=["payloads.Other"]):
        assert len(hoisted_keys(optimized_graph(*colls))) == 1


def test_exclude_from_environment():
    env = {**os.environ, "DASK_DEDUPGRAPH__EXCLUDE": "a.B, c.D"}
    code = "import dedupgraph; print(dedupgraph.Settings.from_config().exclude)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('a.B', 'c.D')"


@pytest.mark.parametrize("bad", [[1], [""], 3])
def test_invalid_exclude_names_the_setting(bad):
    with pytest.raises(ValueError, match="exclude"):
        dedupgraph.enable(exclude=bad)


def test_keep_inline_marks_the_object_and_survives_pickling():
    m = dedupgraph.keep_inline(Mapper())
    colls = [delayed(uses_mapper)(i, m) for i in range(4)]
    with dedupgraph.enable():
        assert hoisted_keys(optimized_graph(*colls)) == []
    assert FingerprintMemo(1024).why_inline(m) is None  # not asked yet
    memo = FingerprintMemo(1024)
    assert memo.fingerprint(m) is None and memo.why_inline(m) == EXCLUDED
    # the mark travels to a distributed scheduler with the object
    assert dedupgraph.core.inline.is_kept_inline(pickle.loads(pickle.dumps(m)))


def test_keep_inline_of_plain_containers_returns_marked_copies():
    lookup = {i: str(i) * 20 for i in range(5000)}
    kept = dedupgraph.keep_inline(lookup)
    assert isinstance(kept, InlineDict) and kept == lookup
    colls = [delayed(len)(kept) for _ in range(3)]
    with dedupgraph.enable():
        assert hoisted_keys(optimized_graph(*colls)) == []
        assert [c.compute() for c in colls] == [5000] * 3
    shared = [delayed(len)(lookup) for _ in range(3)]
    with dedupgraph.enable():
        assert len(hoisted_keys(optimized_graph(*shared))) == 1


@pytest.mark.parametrize("obj", [np.zeros(100_000), pd.Series(range(10))])
def test_keep_inline_refuses_what_it_cannot_mark(obj):
    with pytest.raises(TypeError, match="dedupgraph.exclude"):
        dedupgraph.keep_inline(obj)
