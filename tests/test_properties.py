"""Property tests: on random task graphs the pass never changes a result.

Graphs mix nested lists, tuples, dicts and sets, arguments and keyword
arguments, references to earlier tasks, nested tasks, fused subgraphs with
inline inputs, functions that carry objects (bound methods, partials,
closures), and large objects shared by identity, equal by content,
unpicklable, or small.
"""

from __future__ import annotations

import functools
import graphlib
import hashlib
from typing import Any

import dask
import dask.threaded
import pytest
from dask._task_spec import DataNode, Task, TaskRef, _execute_subgraph, parse_input
from dask.core import getcycle, isdag, validate_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedupgraph import Deduplicator

PAYLOAD = 40_000
MIN_BYTES = 32 * 1024


class Big:
    def __init__(self, tag: int, ident: int | None = None) -> None:
        self.tag = tag
        self.payload = bytes([tag]) * PAYLOAD
        # which object this is, for results that tell equal copies apart; left
        # out of the pickle, so that copies still have equal content
        self.ident = ident

    def __getstate__(self) -> dict[str, Any]:
        return {"tag": self.tag, "payload": self.payload}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, ident=None)

    def describe(self, *args: Any, **kwargs: Any) -> str:
        return digest(("bound", self.tag, describe(*args, **kwargs)))

    def __hash__(self) -> int:
        return self.tag

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Big) and other.tag == self.tag and other.payload == self.payload


class Unpicklable(Big):
    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


def canonical(value: Any) -> Any:
    """A description of a value by content, never by identity."""
    if isinstance(value, Big):
        return (type(value).__name__, value.tag, len(value.payload), value.ident)
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), canonical(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return ("set", sorted(repr(canonical(v)) for v in value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canonical(v) for v in value])
    return value


def digest(description: Any) -> str:
    # short results, so that results of results do not nest without bound
    return hashlib.sha1(repr(description).encode()).hexdigest()[:16]


def describe(*args: Any, **kwargs: Any) -> str:
    return digest(([canonical(a) for a in args], sorted((k, canonical(v)) for k, v in kwargs.items())))


def with_object(obj: Any, *args: Any, **kwargs: Any) -> str:
    return digest(("partial", canonical(obj), describe(*args, **kwargs)))


def closure_over(obj: Any):
    def inner(*args: Any, **kwargs: Any) -> str:
        return digest(("closure", canonical(obj), describe(*args, **kwargs)))

    return inner


# A pool of objects per example: index 0 and 1 are equal copies, 2 differs,
# 3 is unpicklable, 4 is small.  With ``identity``, results tell the copies apart.
def make_pool(identity: bool) -> list[Any]:
    ident = range(4) if identity else [None] * 4
    return [Big(1, ident[0]), Big(1, ident[1]), Big(2, ident[2]), Unpicklable(3, ident[3]), 7]


leaf = st.one_of(
    st.tuples(st.just("int"), st.integers(-5, 5)),
    st.tuples(st.just("str"), st.text("ab", max_size=3)),
    st.tuples(st.just("obj"), st.integers(0, 4)),
    st.tuples(st.just("ref"), st.integers(0, 10)),
)
values = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.lists(inner, max_size=4)),
        st.tuples(st.just("tuple"), st.lists(inner, max_size=4)),
        st.tuples(st.just("dict"), st.dictionaries(st.text("xyz", min_size=1, max_size=2), inner, max_size=3)),
        st.tuples(st.just("set"), st.lists(st.tuples(st.just("obj"), st.integers(0, 4)), max_size=3)),
        st.tuples(st.just("task"), st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)
funcs = st.sampled_from(["plain", "bound", "partial", "closure"])
task_specs = st.tuples(
    st.sampled_from(["task", "task", "fused"]),
    funcs,
    st.integers(0, 4),  # the object a function carries
    st.lists(values, max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=2),
)


def build_value(desc: Any, pool: list[Any], earlier: list[str]) -> Any:
    kind, body = desc
    if kind == "int" or kind == "str":
        return body
    if kind == "obj":
        return pool[body]
    if kind == "ref":
        return TaskRef(earlier[body % len(earlier)]) if earlier else body
    items = [build_value(d, pool, earlier) for d in (body.values() if kind == "dict" else body)]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "dict":
        return dict(zip(body.keys(), items))
    if kind == "set":
        return set(items)
    return Task(None, describe, *[parse_input(i) for i in items])


def build_func(kind: str, obj: Any) -> Any:
    if kind == "bound" and isinstance(obj, Big):
        return obj.describe
    if kind == "partial":
        return functools.partial(with_object, obj)
    if kind == "closure":
        return closure_over(obj)
    return describe


def build_graph(specs: list[Any], identity: bool = True) -> dict[str, Any]:
    pool = make_pool(identity)
    graph: dict[str, Any] = {}
    for index, (shape, func_kind, func_obj, arg_descs, kwarg_descs) in enumerate(specs):
        key = f"t-{index}"
        earlier = list(graph)
        func = build_func(func_kind, pool[func_obj])
        args = [parse_input(build_value(d, pool, earlier)) for d in arg_descs]
        kwargs = {k: parse_input(build_value(d, pool, earlier)) for k, d in kwarg_descs.items()}
        if shape == "task":
            graph[key] = Task(key, func, *args, **kwargs)
            continue
        # a fused task: the inner task reads its inputs from inline data nodes,
        # and its literal keyword arguments cannot reference outer keys
        kwargs = {k: parse_input(build_value(d, pool, [])) for k, d in kwarg_descs.items()}
        inkeys = tuple(f"__in{i}" for i in range(len(args)))
        inner = {"out": Task("out", func, *(TaskRef(k) for k in inkeys), **kwargs)}
        deps = [a if isinstance(a, (TaskRef, Task)) else DataNode(k, a) for k, a in zip(inkeys, args)]
        graph[key] = Task(key, _execute_subgraph, inner, "out", inkeys, *deps)
    return graph


def validate(graph: dict[str, Any]) -> None:
    """Every key valid and every dependency present (dask's checks), and no cycle (dask's and graphlib's)."""
    for key, node in graph.items():
        validate_key(key)
        assert node.key == key, (key, node)
        missing = set(node.dependencies) - set(graph)
        assert not missing, (key, missing)
    assert isdag(graph, list(graph)), getcycle(graph, list(graph))
    tuple(graphlib.TopologicalSorter({k: n.dependencies for k, n in graph.items()}).static_order())


def check(specs: list[Any], merge_equal: str = "immutable") -> None:
    """Results, validity and idempotence; results tell equal copies apart unless they may merge."""
    graph = build_graph(specs, identity=merge_equal != "always")
    keys = list(graph)
    expected = dask.get(graph, keys)
    opt = Deduplicator(min_bytes=MIN_BYTES, merge_equal=merge_equal)
    out = opt(graph, keys)
    validate(out)
    assert dask.get(out, keys) == expected
    assert dask.threaded.get(out, keys) == expected
    assert opt(out, keys) is out  # idempotent


examples = given(st.lists(task_specs, min_size=1, max_size=8))
health = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=300, deadline=None, suppress_health_check=health)
@examples
def test_random_graphs_keep_their_results(specs):
    check(specs)


@pytest.mark.parametrize("merge_equal", ["always", "never"])
@settings(max_examples=100, deadline=None, suppress_health_check=health)
@examples
def test_random_graphs_keep_their_results_whatever_merges(merge_equal, specs):
    check(specs, merge_equal)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=health)
@examples
def test_random_graphs_keep_their_results_many(specs):
    check(specs)


def test_generated_graphs_do_hoist():
    """The property is not vacuous: equal and shared objects really get hoisted."""
    specs = [("task", "plain", 0, [("obj", 0)], {}), ("fused", "bound", 2, [("obj", 1)], {"a": ("obj", 2)})]
    graph = build_graph(specs)
    out = Deduplicator(min_bytes=MIN_BYTES, merge_equal="always")(graph, list(graph))
    # Big(1) and its equal copy sit in two tasks; Big(2) and its bound method in one only
    assert [k.split("-")[1] for k in out if k.startswith("dedup-")] == ["Big"]
    check(specs, "always")
    # a mutable Big(1) and its copy are two objects, each in one task: nothing to hoist
    assert Deduplicator(min_bytes=MIN_BYTES)(graph, list(graph)) is graph
    shared = [("task", "plain", 0, [("obj", 0)], {}), ("task", "plain", 0, [("obj", 0), ("obj", 1)], {})]
    graph = build_graph(shared)
    out = Deduplicator(min_bytes=MIN_BYTES)(graph, list(graph))
    assert [k.split("-")[1] for k in out if k.startswith("dedup-")] == ["Big"]  # Big(1) #0, by identity
    check(shared)
