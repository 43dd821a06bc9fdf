"""Fixtures shared by every test module."""

from __future__ import annotations

from typing import Any

import dask
import distributed  # noqa: F401  (registers its config defaults before any snapshot below)
import pytest


@pytest.fixture(autouse=True)
def restore_dask_config():
    """Tests that switch the pass on globally must not leak into the next test."""
    saved = _copy_dicts(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def _copy_dicts(value: Any) -> Any:
    # copy the nesting, not the leaves: optimizer objects must keep their identity
    if isinstance(value, dict):
        return {k: _copy_dicts(v) for k, v in value.items()}
    return value


@pytest.fixture(autouse=True)
def no_invalid_setting_reported_yet(monkeypatch):
    """An invalid setting is reported once per process: each test starts with none reported."""
    from dedupgraph import settings

    monkeypatch.setattr(settings, "_reported", set())
