"""The pytest plugin dedupgraph.testing: the pass is on inside every test, and it counts.

Each case runs a small test file in a pytest subprocess, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

INNER_TESTS = '''
import dask
import dask.array as da
from dask import delayed
from distributed.utils_test import gen_cluster, reset_config

from dedupgraph.routes.config import Deduplicator


def test_pass_is_on():
    for key in ("array_optimize", "delayed_optimize", "bag_optimize"):
        assert isinstance(dask.config.get(key), Deduplicator)
    assert dask.config.get("dedupgraph.min-bytes") == 1


def test_config_set_to_plain_dask_leaves_later_tests_alone():
    # a test that switches the pass off without restoring it
    dask.config.config.pop("delayed_optimize", None)


def test_after_reset_config():
    # what gen_cluster, gen_test and the loop/client fixtures do first
    reset_config()
    assert isinstance(dask.config.get("delayed_optimize"), Deduplicator)
    assert dask.config.get("dedupgraph.min-bytes") == 1
    shared = list(range(20))
    assert dask.compute(*[delayed(len)(shared) for _ in range(3)], scheduler="sync") == (20, 20, 20)


@gen_cluster(client=True)
async def test_on_a_cluster(c, s, a, b):
    shared = list(range(20))
    total = da.ones(10, chunks=2).map_blocks(lambda x, t: x + len(t), shared).sum()
    assert await c.compute(total) == 210
'''


def run_pytest(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    stats = tmp_path / "stats.json"
    command = [sys.executable, "-m", "pytest", "test_inner.py", "-p", "no:cacheprovider", "-q", *options]
    if "dedupgraph.testing" in options:
        command.append(f"--dedupgraph-stats={stats}")
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    return proc, json.loads(stats.read_text()) if stats.exists() else None


def test_plugin_switches_the_pass_on_in_every_test_and_counts(tmp_path: Path) -> None:
    proc, stats = run_pytest(tmp_path, "-p", "dedupgraph.testing", "--dedupgraph-min-bytes=1", "--dedupgraph-min-count=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dedupgraph: pass forced on, min-bytes=1, min-count=2" in proc.stdout
    assert "pass on in 4 tests;" in proc.stdout
    assert stats is not None
    # the sync computation and the cluster's (the pass runs in the scheduler)
    assert stats["tests_with_graphs"] == 2
    assert stats["tests_with_hoists"] == 2
    assert stats["hoisted_graphs"] >= 2
    assert stats["failures"] == [] and stats["off"] == {}


def test_without_the_plugin_the_same_tests_see_plain_dask(tmp_path: Path) -> None:
    proc, stats = run_pytest(tmp_path)
    assert proc.returncode == 1
    assert "2 failed" in proc.stdout, proc.stdout  # the two that check the config
    assert "pass forced on" not in proc.stdout
    assert stats is None


def test_strict_fails_a_test_in_which_the_pass_failed(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text(
        textwrap.dedent(
            """
            import dask
            from dask import delayed
            import dedupgraph.routes.config

            def test_pass_raises(monkeypatch):
                def broken(dsk, settings, **kwargs):
                    raise RuntimeError("boom")
                monkeypatch.setattr(dedupgraph.routes.config, "deduplicate_graph", broken)
                # something large in two tasks: a graph with nothing the pass could hoist never reaches it
                big = b"x" * 100_000
                assert dask.compute(delayed(len)(big), delayed(len)(big), scheduler="sync") == (100_000, 100_000)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_broken.py", "-p", "no:cacheprovider", "-q",
         "-p", "dedupgraph.testing", "--dedupgraph-strict"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    # the computation succeeds (the pass leaves the graph unchanged), the teardown reports it
    assert proc.returncode == 1
    assert "1 passed, 1 error" in proc.stdout, proc.stdout
    assert "the pass failed 1 times" in proc.stdout
    assert "RuntimeError: boom" in proc.stdout


def test_invalid_settings_are_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_nothing.py", "-p", "no:cacheprovider", "-p", "dedupgraph.testing",
         "--dedupgraph-min-count=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 4  # pytest's usage error
    assert "min-count" in proc.stderr
