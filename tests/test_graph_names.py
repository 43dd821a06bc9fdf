"""The names of dedupgraph that graphs refer to are exactly those docs/how-it-works.rst lists.

A pickled graph names its functions and classes by module and name; the
process that unpickles it (the scheduler, a worker) imports them. Every way
dedupgraph touches a graph is pickled here as distributed sends it, and an
unpickler records every name of ours it is asked for.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
import warnings
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import _execute_subgraph
from dask.base import collections_to_expr
from distributed import Client, LocalCluster
from distributed.protocol import serialize
from distributed.protocol.pickle import dumps

import dedupgraph
from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.core.runtime import call_guarded
from dedupgraph.placement import host, in_graph
from dedupgraph.core.fingerprint import content_fingerprint
from dedupgraph.core.plan import hoisted_key
from dedupgraph.routes.distributed.client import probe
from dedupgraph.routes.distributed.uploads import Prepickled, outline, pickle_sparing
from dedupgraph.tools.metrics import WorkerMetrics
from dedupgraph.tools.observe import on_scheduler
from dedupgraph.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "how-it-works.rst"
TABLE = pd.Series(range(30_000)).to_numpy()


class Recorder(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.names: set[str] = set()

    def persistent_load(self, pid):  # noqa: ANN001, ANN201  (a kept object left out: not ours to load)
        return pid

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if module.split(".")[0] == "dedupgraph":
            self.names.add(f"{module}.{name}")
        return super().find_class(module, name)


def names_of(data: bytes) -> set[str]:
    recorder = Recorder(data)
    recorder.load()
    return recorder.names


def names_in(obj: object) -> set[str]:
    return names_of(cloudpickle.dumps(obj))


def documented() -> set[str]:
    """The names of the table in the section "Names in graphs", spelled out in full."""
    text = DOCS.read_text()
    section = text[text.index(".. _names-in-graphs:") :]
    section = section[: section.index("These names may move")]
    found: set[str] = set()
    for cell in re.findall(r"\* - (``dedupgraph\..*?)\n     -", section, flags=re.S):
        module = ""
        for name in re.findall(r"``([\w.]+)``", cell):
            if name.startswith("dedupgraph."):
                module, _, last = name.rpartition(".")
                found.add(name)
            else:  # a further name of the same module
                found.add(f"{module}.{name}")
    return found


def add_len(block, table):
    return block + len(table)


class Holder:
    def __init__(self, table):
        self.table = table

    def apply(self, x):
        return x + len(self.table)


def test_every_name_a_graph_refers_to_is_documented_and_every_documented_one_is_used():
    seen: set[str] = set()
    # the config route on distributed: the pass travels with the expression
    x = da.ones((8, 4), chunks=(1, 4)).map_blocks(add_len, TABLE)
    with dedupgraph.enable():
        seen |= names_in(collections_to_expr([x]).optimize())
        seen |= names_in(collections_to_expr([dask.delayed(len)(TABLE)]).optimize())
        seen |= names_in(collections_to_expr([db.from_sequence(range(4)).map(add_len, TABLE)]).optimize())
    # ... unless its settings are invalid: then it travels as what it wraps, to leave graphs plain
    with dedupgraph.enable(), dask.config.set({"dedupgraph.min-bytes": "lots"}), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the warning is test_invalid_settings' subject
        travelled = names_in(dask.config.get("array_optimize"))
    assert "dedupgraph.routes.config.Deduplicator" not in travelled
    seen |= travelled
    # a hoisted function: tasks call it through the runtime
    holder = Holder(TABLE)
    calls = [dask.delayed(holder.apply)(i) for i in range(4)]
    (deduped,) = dedupgraph.deduplicate(calls, client=False)
    seen |= names_in(dict(deduped[0].dask))
    graph = dict(x.__dask_optimize__(x.__dask_graph__(), x.__dask_keys__()))
    # check-mutation: the tasks that receive a mutable hoisted object check it through the runtime
    checked = Settings(check_mutation=True)
    seen |= names_in(deduplicate_graph(graph, checked))
    seen |= names_in(dedupgraph.deduplicate(calls, client=False, check_mutation=True))
    # share="host": a handle under the hoisted key, unwrapped by the carrying tasks, which say
    # so when they write into it
    per_host = Settings(share="host", share_min_bytes=1)
    hoisted = deduplicate_graph(graph, per_host, place=in_graph(per_host))
    assert any(node.func is _execute_subgraph and any(inner.func is call_guarded for inner in node.args[0].values())
               for node in hoisted.values() if hasattr(node, "func"))
    seen |= names_in(hoisted)
    # ... which travels between workers as distributed serializes it: the type by name,
    # and, to a process of the same host, as a ticket to the segment
    shared = next(node for key, node in hoisted.items() if str(key).startswith("dedup-host-")).args[0]
    header, _ = serialize(shared, serializers=("dask",), on_error="raise")
    seen |= names_of(header["type-serialized"])
    elsewhere = dataclasses.replace(shared.layout, digest="0" * 32)  # a segment this process has not mapped
    seen |= names_in(host.from_ticket(elsewhere, ("tcp://127.0.0.1:1",)))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        # scattered once, with a task that says so if the object is lost
        (scattered,) = dedupgraph.deduplicate(x, client=client)
        seen |= names_in(dict(scattered.__dask_graph__()))
        # DataFrames rebuilt from the deduplicated graph keep their keys
        df = dd.from_pandas(pd.DataFrame({"a": range(8)}), npartitions=4).map_partitions(lambda p, t: p + len(t), TABLE)
        (frame,) = dedupgraph.deduplicate(df, client=client)
        seen |= names_in(frame.expr)
    # a later graph without the objects the scheduler keeps: pickled by the client itself, and
    # distributed pickles what stands for the expression
    big = np.arange(2**18)  # kept objects smaller than SPARE_MIN_BYTES are not left out
    y = da.ones((8, 4), chunks=(1, 4)).map_blocks(add_len, big)
    with dedupgraph.enable():
        expr = collections_to_expr([y])
    pickled = pickle_sparing(expr, {("ndarray", outline(big)): {hoisted_key(content_fingerprint(big))}})
    assert pickled.spared
    recorder = Recorder(pickle.dumps(Prepickled("token", pickled), protocol=5))
    with pytest.raises(RuntimeError, match="holds no reservation"):  # unpickled away from a scheduler
        recorder.load()
    seen |= recorder.names
    seen |= names_of(pickled.payload)  # what the expression itself names (the pass it carries)
    seen |= {f"{probe.__module__}.{probe.__name__}"}  # pickled by the client preload itself
    seen |= names_in(on_scheduler)  # pickled by dedupgraph status
    seen |= names_of(dumps(WorkerMetrics()))  # pickled by the scheduler for each worker
    assert seen == documented()


@pytest.mark.parametrize("name", sorted(documented()))
def test_every_documented_name_imports(name):
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ImportError:  # a method: module.Class.method
        module, _, cls = module.rpartition(".")
        owner = getattr(importlib.import_module(module), cls)
    assert getattr(owner, attr) is not None
