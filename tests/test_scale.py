"""A million tasks: the pass completes, and the object they all share is pickled once."""

from __future__ import annotations

import itertools

from dask._task_spec import Task, TaskRef

from dedupgraph.core.pipeline import deduplicate_graph
from dedupgraph.settings import Settings

N = 1_000_000


class CountedPickles:
    """Large when pickled; counts how often it is."""

    counter = itertools.count()

    def __init__(self) -> None:
        self.payload = bytes(100_000)
        self.pickles = 0

    def __reduce__(self):
        self.pickles += 1
        return (bytes, (self.payload,))


def _len_plus(obj: bytes, i: int) -> int:
    return len(obj) + i


def test_a_million_tasks_share_one_key_and_one_pickle():
    shared = CountedPickles()
    graph = {("t", i): Task(("t", i), _len_plus, shared, i) for i in range(N)}
    graph["total"] = Task("total", len, TaskRef(("t", 0)))
    out = deduplicate_graph(graph, Settings())
    assert shared.pickles == 1
    (key,) = [k for k in out if isinstance(k, str) and k.startswith("dedup-")]
    assert len(out) == N + 2
    assert all(out[("t", i)].dependencies == {key} for i in range(0, N, 997))
    assert out["total"] is graph["total"]
