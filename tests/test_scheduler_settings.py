"""On distributed the pass runs on the scheduler: the client's settings must travel with it."""

from __future__ import annotations

import os

import dask
import pytest
from dask import delayed
from distributed import Client
from distributed.deploy.subprocess import SubprocessCluster

import dedupgraph

from payloads import Mapper, uses_mapper

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SCHEDULER_MIN_BYTES = "1 GiB"  # the scheduler's own config would hoist nothing


@pytest.fixture(scope="module")
def client():
    # the scheduler runs in its own process, with its own dask config
    # (and must import the tests' own modules to unpickle their objects)
    env = {
        "DASK_DEDUPGRAPH__MIN_BYTES": SCHEDULER_MIN_BYTES,
        "PYTHONPATH": os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster = SubprocessCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    with cluster, Client(cluster) as c:
        yield c


def _scheduler_state(dask_scheduler):
    return {
        "keys": [str(k) for k in dask_scheduler.tasks],
        "min_bytes": dask.config.get("dedupgraph.min-bytes", None),
    }


def _persisted_keys(client, *colls):
    futures = client.persist(list(colls))
    results = client.gather(client.compute(futures))
    state = client.run_on_scheduler(_scheduler_state)
    del futures
    return results, state


def test_scheduler_is_really_configured_otherwise(client):
    import dedupgraph  # noqa: F401  (registers the defaults here, as on the scheduler)

    state = client.run_on_scheduler(_scheduler_state)
    assert state["min_bytes"] == SCHEDULER_MIN_BYTES
    assert dask.config.get("dedupgraph.min-bytes") != SCHEDULER_MIN_BYTES


def test_client_settings_apply_on_the_scheduler(client):
    m = Mapper()
    colls = [delayed(uses_mapper)(i, m) for i in range(8)]
    with dedupgraph.enable():
        results, state = _persisted_keys(client, *colls)
    assert results == [uses_mapper(i, m) for i in range(8)]
    assert [k for k in state["keys"] if k.startswith("dedup-Mapper-")]


def test_client_config_set_applies_on_the_scheduler(client):
    m = Mapper(rows=30_001)  # content of its own: no key left over from another test
    colls = [delayed(uses_mapper)(i + 100, m) for i in range(8)]
    with dask.config.set(delayed_optimize=dedupgraph.dedup_delayed), dask.config.set(
        {"dedupgraph.min-bytes": "100 KiB"}
    ):
        results, state = _persisted_keys(client, *colls)
    assert results == [uses_mapper(i + 100, m) for i in range(8)]
    # the scheduler's own 1 GiB would have hoisted nothing
    assert [k for k in state["keys"] if k.startswith("dedup-Mapper-")]
