"""Fixtures shared by every test module."""

from __future__ import annotations

import copy

import dask
import pytest


@pytest.fixture(autouse=True)
def restore_dask_config():
    """Tests that switch the pass on globally must not leak into the next test."""
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)
