"""The traversal: every node type, rebuilt only where a leaf changes."""

from __future__ import annotations

import asyncio
from typing import Any

from dask._task_spec import (
    Alias,
    DataNode,
    Dict,
    List,
    Set,
    Task,
    TaskRef,
    Tuple,
    _execute_subgraph,
    execute_graph,
)

from dedupgraph.core.runtime import call
from dedupgraph.core.transform import SMALL_CONTAINER_LEN, TaskTransformer


class Big:
    """Marker for the value the test transformer replaces."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, *args: Any) -> int:
        return self.n + sum(args)


BIG = Big(1000)
REF = TaskRef("big-key")


class ReplaceBig(TaskTransformer):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def visit_leaf(self, value: Any, where: str) -> Any:
        self.seen.append(value)
        return REF if value is BIG else value


def run(node: Task, **values: Any) -> Any:
    """Execute one rewritten task with the hoisted value supplied."""
    graph = {"big-key": DataNode("big-key", BIG), **values, node.key: node}
    return execute_graph(graph, keys=[node.key])[node.key]


def test_unchanged_task_is_the_same_object():
    task = Task("k", max, 1, [2, 3], x=(4, 5))
    assert ReplaceBig().visit_node(task) is task


def test_positional_and_keyword_arguments():
    task = Task("k", lambda a, b=None: a.n + b.n, BIG, b=BIG)
    new = ReplaceBig().visit_node(task)
    assert new.args == (REF,) and new.kwargs == {"b": REF}
    assert new.dependencies == {"big-key"}
    assert run(new) == 2000


def test_function_is_called_through_call():
    new = ReplaceBig().visit_node(Task("k", BIG, 1, 2))
    assert new.func is call and new.args == (REF, 1, 2)
    assert run(new) == 1003


def test_coroutine_function_is_never_hoisted():
    async def coro(x: int) -> int:
        return x

    class ReplaceCoro(TaskTransformer):
        def visit_leaf(self, value: Any, where: str) -> Any:
            return REF if value is coro else value

    task = Task("k", coro, 1)
    assert ReplaceCoro().visit_node(task) is task
    assert asyncio.run(coro(1)) == 1


def test_plain_containers_become_container_tasks():
    task = Task("k", lambda xs, d, t, s: xs[0].n + d["m"].n + t[1].n + len(s),
                [BIG, 1], {"m": BIG, "other": 2}, (0, BIG), {BIG, 7})
    new = ReplaceBig().visit_node(task)
    assert [type(a) for a in new.args] == [List, Dict, Tuple, Set]
    assert run(new) == 3002


def test_nested_plain_containers():
    new = ReplaceBig().visit_node(Task("k", lambda x: x[0][0].n, [[BIG]]))
    assert isinstance(new.args[0], List)
    assert run(new) == 1000


def test_lone_container_element_is_not_unpacked():
    new = ReplaceBig().visit_node(Task("k", lambda x: x, [[BIG, 2]]))
    assert run(new) == [[BIG, 2]]
    new = ReplaceBig().visit_node(Task("k", lambda x: x, ((BIG,),)))
    assert run(new) == ((BIG,),)


def test_long_plain_containers_are_one_leaf():
    long = [BIG] * (SMALL_CONTAINER_LEN + 1)
    transformer = ReplaceBig()
    assert transformer.visit_node(Task("k", len, long)).args == (long,)
    assert transformer.seen == [len, long]


def test_container_tasks():
    for container in (List(TaskRef("x"), BIG), Tuple(BIG, TaskRef("x")), Set(BIG, TaskRef("x"))):
        new = ReplaceBig().visit_node(Task("k", lambda c: sorted(map(str, c)), container))
        assert type(new.args[0]) is type(container)
        assert new.dependencies == {"x", "big-key"}
        assert run(new, x=DataNode("x", "x")) == sorted(map(str, [BIG, "x"]))
    new = ReplaceBig().visit_node(Task("k", lambda d: d["m"].n, Dict(m=BIG, x=TaskRef("x"))))
    assert run(new, x=DataNode("x", 1)) == 1000


def test_inline_data_node_becomes_reference():
    new = ReplaceBig().visit_node(Task("k", lambda b: b.n, DataNode(None, BIG)))
    assert new.args == (REF,)
    assert run(new) == 1000


def test_nested_tasks_and_legacy_shapes():
    inner = Task(None, lambda b: b.n, BIG)
    new = ReplaceBig().visit_node(Task("k", lambda x: x + 1, inner))
    assert new.dependencies == {"big-key"}
    assert run(new) == 1001


def test_alias_and_refs_untouched():
    task = Task("k", max, Alias("a", "b"), TaskRef("c"))
    assert ReplaceBig().visit_node(task) is task
    for node in (Alias("a", "b"), DataNode("d", BIG)):
        assert ReplaceBig().visit_node(node) is node  # top-level data is a key already


def test_data_producer_flag_is_kept():
    new = ReplaceBig().visit_node(Task("k", max, BIG, 1, _data_producer=True))
    assert new.data_producer


def _fused(*, deps: tuple[Any, ...], inner: dict[str, Task], inkeys: tuple[str, ...]) -> Task:
    return Task(("out", 0), _execute_subgraph, inner, "inner-out", inkeys, *deps)


def test_fused_subgraph_inline_inputs():
    inner = {"inner-out": Task("inner-out", lambda b, x: b.n + x, TaskRef("__in0"), TaskRef("__in1"))}
    task = _fused(deps=(DataNode("__in0", BIG), TaskRef("x")), inner=inner, inkeys=("__in0", "__in1"))
    new = ReplaceBig().visit_node(task)
    assert new.dependencies == {"big-key", "x"}
    assert run(new, x=DataNode("x", 5)) == 1005


def test_fused_subgraph_inner_tasks_get_the_key_as_input():
    inner = {
        "inner-out": Task("inner-out", lambda a: a + 1, TaskRef("mid")),
        "mid": Task("mid", BIG, TaskRef("__in0")),
        "lit": DataNode("lit", BIG),
        "unchanged": Task("unchanged", max, 1, 2),
    }
    task = _fused(deps=(TaskRef("x"),), inner=inner, inkeys=("__in0",))
    new = ReplaceBig().visit_node(task)
    new_inner = new.args[0]
    assert new_inner["unchanged"] is inner["unchanged"]
    assert isinstance(new_inner["lit"], Alias)
    assert "big-key" in new.args[2]
    assert new.dependencies == {"big-key", "x"}
    assert run(new, x=DataNode("x", 5)) == 1006


def test_subgraph_within_subgraph():
    innermost = _fused(deps=(DataNode("__a", BIG),), inner={"inner-out": Task("inner-out", lambda b: b.n, TaskRef("__a"))}, inkeys=("__a",))
    innermost = Task("mid", innermost.func, *innermost.args)
    outer = Task(("out", 0), _execute_subgraph, {"top": Task("top", lambda v: v * 2, TaskRef("mid")), "mid": innermost}, "top", ())
    new = ReplaceBig().visit_node(outer)
    assert new.dependencies == {"big-key"}
    assert run(new) == 2000


class _Recorder(TaskTransformer):
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def visit_leaf(self, value: Any, where: str) -> Any:
        self.seen.append((id(value), where))
        return value


def _graphs():
    from test_optimizer import CASES

    from payloads import Mapper, optimized_graph

    m = Mapper(rows=10)
    for build in CASES.values():
        yield optimized_graph(build(m))
    yield {"t": Task("t", max, [BIG, (1, [BIG])], Dict(a=BIG), k=Set(BIG, TaskRef("x")))}
    yield {
        "f": _fused(
            deps=(DataNode("__in0", BIG), TaskRef("x")),
            inner={"inner-out": Task("inner-out", BIG, TaskRef("__in0"), [3, BIG]), "lit": DataNode("lit", (1, 2))},
            inkeys=("__in0", "__in1"),
        )
    }


def test_walker_and_transformer_see_the_same_leaves():
    from dedupgraph.core.transform import walk_leaves

    for graph in _graphs():
        for node in graph.values():
            walked: list[tuple[int, str]] = []
            walk_leaves(node, lambda v, w: walked.append((id(v), w)))
            recorder = _Recorder()
            assert recorder.visit_node(node) is node
            assert sorted(walked) == sorted(recorder.seen)


def test_a_walk_that_remembers_shared_inner_graphs_sees_what_the_plain_walk_sees():
    from dedupgraph.core.transform import walk_leaves

    small = (1, 2)
    shared_inner = {
        "inner-out": Task("inner-out", BIG, TaskRef("__in0"), [3, BIG], k=Task(None, max, TaskRef("__in0"), BIG)),
        "lit": DataNode("lit", BIG),
        "other": DataNode("other", small),
    }
    graph = {
        **{
            ("f", i): Task(("f", i), _execute_subgraph, shared_inner, "inner-out", ("__in0",), DataNode("__in0", BIG), [i, BIG])
            for i in range(3)
        },
        "g": Task("g", _execute_subgraph, dict(shared_inner), "inner-out", ("__in0",), DataNode("__in0", 4)),
        **{("h", i): Task(("h", i), max, i, Task(None, min, BIG, i)) for i in range(2)},
    }
    graph = {**graph, **_graphs_flat()}  # and the fused tasks dask's optimizations make

    def walk(subgraphs: dict | None) -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        skip: set[int] = set()

        def visit(value: Any, where: str) -> None:
            seen.append((id(value), where))
            if value is not BIG:  # as stage 1 does: what is judged small is skipped from then on
                skip.add(id(value))

        for node in graph.values():
            walk_leaves(node, visit, skip, subgraphs)
        return seen

    remembered: dict = {}
    assert walk(remembered) == walk(None)
    assert id(shared_inner) in remembered  # walked once for the three tasks that hold it


def _graphs_flat() -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for index, graph in enumerate(_graphs()):
        out.update({(index, key): node for key, node in graph.items()})
    return out
