"""Settings: YAML defaults in dask.config, env overrides, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import pytest

import dedupgraph
from dedupgraph.settings import Settings


def test_defaults_come_from_the_shipped_yaml():
    assert dask.config.get("dedupgraph.min-bytes") == "auto"
    assert dask.config.get("dedupgraph.floor-bytes") == "4 KiB"
    assert dask.config.get("dedupgraph.min-count") == 2
    assert Settings.from_config() == Settings(min_bytes=None, floor_bytes=4096, min_count=2, dry_run=False, exclude=())


def test_config_and_overrides():
    with dask.config.set({"dedupgraph.min-bytes": "1 MiB", "dedupgraph.min-count": 4}):
        assert Settings.from_config() == Settings(1024 * 1024, 4)
        assert Settings.from_config(min_count=7, **{"min-bytes": 10}) == Settings(10, 7)


def test_environment_variables_override_defaults():
    env = {
        **os.environ,
        "DASK_DEDUPGRAPH__MIN_BYTES": "1 MiB",
        "DASK_DEDUPGRAPH__MIN_COUNT": "3",
        "DASK_DEDUPGRAPH__DRY_RUN": "true",
        "DASK_DEDUPGRAPH__HINT_BYTES": "1 GiB",
        "DASK_DEDUPGRAPH__MERGE_EQUAL": "Always",
        "DASK_DEDUPGRAPH__SHARE": "host",
        "DASK_DEDUPGRAPH__SHARE_MIN_BYTES": "4 MiB",
        "DASK_DEDUPGRAPH__SHARE_LIMIT": "0.25",
        "DASK_DEDUPGRAPH__CHECK_MUTATION": "true",
        "DASK_DEDUPGRAPH__REUSE_LIMIT": "25%",
    }
    code = "import dedupgraph; print(dedupgraph.Settings.from_config())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "Settings(min_bytes=1048576, min_count=3, dry_run=True, exclude=(), hint_bytes=1073741824, "
        "merge_equal='always', share='host', share_min_bytes=4194304, share_limit=0.25, "
        "check_mutation=True, floor_bytes=4096, reuse_limit=0.25)"
    )


@pytest.mark.parametrize(
    "value, expected",
    [("immutable", "immutable"), ("ALWAYS", "always"), (" never ", "never")],
)
def test_merge_equal_spellings(value, expected):
    assert Settings.from_config(merge_equal=value).merge_equal == expected
    with dask.config.set({"dedupgraph.merge-equal": value}):
        assert Settings.from_config().merge_equal == expected
    with dedupgraph.enable(merge_equal=value):
        assert dedupgraph.dedup.effective_settings().merge_equal == expected


@pytest.mark.parametrize("value, expected", [("0.5", 0.5), ("8 GiB", 8 * 2**30), (1.0, 1.0), (2**20, 2**20), ("1048576", 2**20)])
def test_share_limit_is_a_fraction_or_bytes(value, expected):
    assert Settings.from_config(share_limit=value).share_limit == expected


def test_share_limit_numbers_that_could_be_a_fraction_or_bytes_are_refused():
    # share_limit=2: 2 bytes? 200%? 2 GiB? Neither a fraction nor a plausible byte count
    for value in (0, 1, 2, 1000, 2**20 - 1, "1000", "2", 0.0, 1.5, 2.0, 1e9):
        for make in (Settings.from_config, dedupgraph.enable):
            with pytest.raises(ValueError, match="share-limit") as caught:
                make(share_limit=value)
            message = str(caught.value)
            assert "0 < f <= 1 (like 0.5)" in message and "at least 1048576 bytes (like '8 GiB'" in message, message
        with dask.config.set({"dedupgraph.share-limit": value}):
            with pytest.raises(ValueError, match="share-limit"):
                Settings.from_config()


@pytest.mark.parametrize(
    "value, expected",
    [("0.1", 0.1), ("10%", 0.1), ("25%", 0.25), ("4 GiB", 4 * 2**30), (1.0, 1.0), (2**20, 2**20),
     (0, 0), ("0", 0), (0.0, 0), ("0.0", 0), ("0%", 0), (False, 0), ("off", 0), ("false", 0), (None, 0)],
)
def test_reuse_limit_is_a_fraction_a_size_or_off(value, expected):
    assert Settings.from_config(reuse_limit=value).reuse_limit == expected
    with dask.config.set({"dedupgraph.reuse-limit": value}):
        assert Settings.from_config().reuse_limit == expected


def test_a_reuse_limit_that_is_neither_a_size_nor_a_fraction_is_refused_by_name():
    for value in ("lots", "150%", 1.5, -0.1, 1, 1000, 2**20 - 1, -(2**30), True, [0.1], "1.5", "-10%"):
        for make in (Settings.from_config, dedupgraph.enable):
            with pytest.raises(ValueError, match="reuse-limit") as caught:
                make(reuse_limit=value)
            assert "fraction of the smallest worker's memory limit" in str(caught.value)
        with dask.config.set({"dedupgraph.reuse-limit": value}):
            with pytest.raises(ValueError, match="reuse-limit"):
                Settings.from_config()


def test_exclude_as_a_string_argument_is_refused_and_read_from_config():
    for make in (Settings.from_config, dedupgraph.enable, dedupgraph.Deduplicator, dedupgraph.inspect):
        with pytest.raises(ValueError, match="exclude") as caught:
            make(exclude="numpy.ndarray")
        assert "pass a list, like exclude=['numpy.ndarray']" in str(caught.value)
    with dask.config.set({"dedupgraph.exclude": "a.B, c.D"}):  # as DASK_DEDUPGRAPH__EXCLUDE gives it
        assert Settings.from_config().exclude == ("a.B", "c.D")
    assert Settings.from_config(exclude=["numpy.ndarray"]).exclude == ("numpy.ndarray",)


@pytest.mark.parametrize("off", [None, False, "None", "false", "off"])
def test_hint_bytes_can_be_switched_off(off):
    with dask.config.set({"dedupgraph.hint-bytes": off}):
        assert Settings.from_config().hint_bytes is None
    assert Settings.from_config(hint_bytes="2 MiB").hint_bytes == 2 * 2**20


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"min_bytes": -1}, "min-bytes"),
        ({"min_bytes": "lots"}, "min-bytes"),
        ({"min_bytes": [1]}, "min-bytes"),
        ({"min_count": 0}, "min-count"),
        ({"min_count": "2"}, "min-count"),
        ({"min_count": True}, "min-count"),
        ({"min_count": 2.5}, "min-count"),
        ({"min_bites": 5}, "min_bites"),
        ({"dry_run": "maybe"}, "dry-run"),
        ({"dry_run": 1}, "dry-run"),
        ({"hint_bytes": "much"}, "hint-bytes"),
        ({"hint_bytes": -5}, "hint-bytes"),
        ({"hint_bytes": True}, "hint-bytes"),
        ({"merge_equal": "sometimes"}, "merge-equal"),
        ({"merge_equal": True}, "merge-equal"),
        ({"share": "cluster"}, "share"),
        ({"share_min_bytes": "big"}, "share-min-bytes"),
        ({"share_limit": 1.5}, "share-limit"),
        ({"share_limit": "half"}, "share-limit"),
        ({"share_limit": -1}, "share-limit"),
        ({"check_mutation": "maybe"}, "check-mutation"),
        ({"check_mutation": 1}, "check-mutation"),
        ({"check_mutation": None}, "check-mutation"),
    ],
)
def test_invalid_settings_name_the_setting(settings, name):
    for make in (Settings.from_config, dedupgraph.enable, dedupgraph.Deduplicator):
        with pytest.raises(ValueError, match=name):
            make(**settings)


def test_invalid_config_is_reported_when_the_pass_runs():
    # reported, not raised: the pass never fails a computation (more in test_invalid_settings.py)
    with dask.config.set({"dedupgraph.min-count": -3}):
        with pytest.warns(RuntimeWarning, match="min-count"):
            graph = dedupgraph.dedup({"a": (sum, [1])}, ["a"])
        assert dask.get(graph, "a") == 1  # dask's own optimization, not the pass
    with dask.config.set({"dedupgraph.max-bytes": 3}):
        with pytest.raises(ValueError, match="max-bytes"):
            Settings.from_config()


def test_integral_floats_are_accepted():
    # DASK_DEDUPGRAPH__MIN_BYTES=1e6 arrives as a float
    assert Settings.from_config(min_bytes=1e6).min_bytes == 1_000_000


def test_as_config_round_trips():
    s = Settings(min_bytes=123, min_count=4)
    with dask.config.set(s.as_config()):
        assert Settings.from_config() == s
