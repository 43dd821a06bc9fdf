"""A later graph leaves out the large objects the scheduler keeps: the client does not send them again."""

from __future__ import annotations

import asyncio
import pickle
import time
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import dedupgraph
from dedupgraph.benchmarks.repeat import SentGraphs
from dedupgraph.routes.distributed import client as client_side
from dedupgraph.routes.distributed.plugin import forget_kept, observations
from dedupgraph.routes.distributed.uploads import SPARE_MIN_BYTES, pickle_sparing, restore

from payloads import HoistedRuns, Mapper, uses_mapper

DEADLINE = 120  # seconds: generous, for a loaded machine
ROWS = 2**18  # an int64 Series of 2 MiB: above SPARE_MIN_BYTES


def _offered(client: Client) -> bool:
    deadline = time.monotonic() + DEADLINE
    while not client._graph_to_futures.offer.kept:  # the scheduler's message arrives on the client's loop
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def cluster():
    with dedupgraph.enable():  # the scheduler route, and the client side in each Client after it
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            yield cluster


@pytest.fixture
def runs(cluster):
    plugin = HoistedRuns()
    name = f"upload-runs-{id(plugin)}"
    cluster.scheduler.add_plugin(plugin, name=name)
    yield plugin
    cluster.scheduler.remove_plugin(name)
    with Client(cluster, set_as_default=False) as client:
        dedupgraph.forget(client)


@pytest.fixture
def client(cluster):
    with Client(cluster, set_as_default=False) as client:
        yield client


def _array(mapper: Mapper):
    return da.arange(40, chunks=2).map_blocks(uses_mapper, mapper)


def _frame(mapper: Mapper):
    frame = dd.from_pandas(pd.DataFrame({"x": np.arange(40)}), npartitions=8)
    return frame.map_partitions(lambda part, m: part.x + len(m.s), mapper, meta=("x", "i8"))


def _object_bytes(mapper: Mapper) -> int:
    return len(pickle.dumps(mapper, protocol=5))


@pytest.mark.parametrize("collection", ["array", "dataframe", "submit"])
def test_a_later_graph_leaves_the_kept_object_out(cluster, runs, client, collection):
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)

    def compute() -> list[int]:
        if collection == "array":
            return client.compute(_array(mapper)).result().tolist()
        if collection == "dataframe":
            return client.compute(_frame(mapper)).result().tolist()
        return client.gather(client.map(uses_mapper, range(6), mapper=mapper, pure=False))

    expected = {
        "array": [uses_mapper(i, mapper) for i in range(40)],
        "dataframe": [i + ROWS for i in range(40)],
        "submit": [uses_mapper(i, mapper) for i in range(6)],
    }[collection]
    assert compute() == expected
    assert _offered(client)
    assert compute() == expected
    assert compute() == expected
    size = _object_bytes(mapper)
    assert sent.graphs[0] > size
    assert all(nbytes < 0.01 * size for nbytes in sent.graphs[1:]), sent.graphs
    assert list(runs.runs.values()) == [1]  # and no worker got it again


def test_an_object_changed_in_place_travels_again_and_gives_plain_dasks_result(runs, client):
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    mapper.s.iloc[-1] = 10**6  # in place, between two computations: a new content
    after = client.compute(da.arange(40, chunks=2).map_blocks(mapper.method)).result()
    with dask.config.set(scheduler="sync"):
        plain = da.arange(40, chunks=2).map_blocks(mapper.method).compute(optimize_graph=False)
    np.testing.assert_array_equal(after, plain)
    assert sent.graphs[1] > _object_bytes(mapper)


def test_an_object_let_go_of_before_the_graph_travels_again(runs, client):
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    assert dedupgraph.forget(client)["objects"] == 1  # the client was told of it, and still believes it kept
    assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
    assert sent.graphs[1] > _object_bytes(mapper)
    assert list(runs.runs.values()) == [2]


def test_an_object_let_go_of_after_it_was_reserved_is_put_back_all_the_same(runs, client, monkeypatch):
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    reserve = client_side.reserve
    answers = []

    async def reserve_then_forget(client: Client, keys: list[str]) -> dict[str, Any]:
        answer = await reserve(client, keys)
        answers.append(answer)
        # the kept object goes between the reservation and the graph
        await client._run_on_scheduler(forget_kept)
        return answer

    monkeypatch.setattr(client_side, "reserve", reserve_then_forget)
    assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
    assert answers and answers[0]["token"] and sent.graphs[1] < 0.01 * _object_bytes(mapper)
    # the key had no other holder left: the scheduler sent the object it put back to a worker again
    assert list(runs.runs.values()) == [2]


def test_of_equal_copies_only_one_is_left_out(runs, client):
    mapper, twin = Mapper(rows=ROWS), Mapper(rows=ROWS)  # equal contents, distinct objects
    sent = SentGraphs(client)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    # (offset: another layer; dask names layers by their arguments' tokens, equal for equal contents)
    both = _array(mapper) + da.arange(40, chunks=2).map_blocks(uses_mapper, twin, offset=1)
    assert client.compute(both).result().tolist() == [2 * uses_mapper(i, mapper) + 1 for i in range(40)]
    size = _object_bytes(mapper)
    assert size < sent.graphs[1] < 1.5 * size  # the twin travelled, the kept one did not


def test_with_reuse_limit_zero_on_the_client_everything_travels(runs, client):
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    with dedupgraph.enable(reuse_limit=0):
        client.compute(_array(mapper)).result()
    assert sent.graphs[1] > _object_bytes(mapper)


def test_an_asynchronous_client_sends_the_object_and_the_scheduler_still_reuses_it(cluster, runs):
    mapper = Mapper(rows=ROWS)

    async def twice() -> tuple[list[int], list[int], bool]:
        async with Client(cluster.scheduler_address, asynchronous=True) as client:
            sent = SentGraphs(client)
            results = []
            for _ in range(2):
                results.append((await client.compute(_array(mapper))).tolist())
            return results, sent.graphs, bool(client._graph_to_futures.offer.kept)

    results, graphs, offered = asyncio.run(twice())
    assert results == [[uses_mapper(i, mapper) for i in range(40)]] * 2
    assert offered and all(nbytes > _object_bytes(mapper) for nbytes in graphs)
    assert list(runs.runs.values()) == [1]  # kept on the cluster: produced once


def test_reuse_never_crosses_schedulers(cluster, runs, client):
    mapper = Mapper(rows=ROWS)
    client.compute(_array(mapper)).result()
    assert _offered(client)
    with dedupgraph.enable():
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as other:
            with Client(other, set_as_default=False) as elsewhere:
                sent = SentGraphs(elsewhere)
                assert elsewhere.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
                assert sent.graphs[0] > _object_bytes(mapper)


def test_small_kept_objects_are_not_offered(runs, client):
    mapper = Mapper(rows=36_000)  # hoisted and kept, but below SPARE_MIN_BYTES
    assert _object_bytes(mapper) < SPARE_MIN_BYTES
    client.compute(_array(mapper)).result()
    client.compute(_array(mapper)).result()
    assert list(runs.runs.values()) == [1] and client._graph_to_futures.offer.kept == {}


def test_a_graph_naming_an_unknown_reservation_fails_with_the_reason():
    pickled = pickle_sparing([1, 2], {})
    with pytest.raises(RuntimeError, match="holds no reservation 'gone'.*Compute again"):
        restore("gone", [pickled.payload])


def test_importing_dedupgraph_imports_no_pandas():
    # every worker imports dedupgraph to run placement's functions: pandas would add tens of MB to each
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import sys, dedupgraph; print('pandas' in sys.modules)"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    assert done.stdout.strip() == "False"


def test_a_kept_object_put_back_into_a_graph_whose_settings_exclude_its_type_stays_inline(cluster, runs, client):
    # the first graph hoisted (and kept) the object; the later one, sent without it, excludes its type:
    # the pass must leave it inline there, as it would if the object had travelled
    mapper = Mapper(rows=ROWS)
    sent = SentGraphs(client)
    assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
    assert _offered(client)
    with dedupgraph.enable(exclude=[f"{Mapper.__module__}.{Mapper.__qualname__}"]):
        assert client.compute(_array(mapper)).result().tolist() == [uses_mapper(i, mapper) for i in range(40)]
    assert sent.graphs[1] < 0.01 * _object_bytes(mapper)  # it was left out of the graph, and put back
    last = observations(cluster.scheduler).history()[-1]
    assert (last.outcome, last.hoisted) == ("unchanged", ())
