"""Keep what dask attaches to graph layers: annotations survive the rewrite.

>>> from dask._task_spec import DataNode, Task, TaskRef
>>> from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
>>> layer = MaterializedLayer({"a": Task("a", len, "x" * 9)}, annotations={"retries": 2})
>>> before = HighLevelGraph({"f": layer}, {"f": set()})
>>> rewritten = {"a": Task("a", len, TaskRef("dedup-str-0")), "dedup-str-0": DataNode("dedup-str-0", "x" * 9)}
>>> after = relayered(before, rewritten, changed={"a"})
>>> sorted(after.layers), after.layers["f"].annotations, sorted(after.dependencies["f"])  # doctest: +ELLIPSIS
(['dedupgraph-hoisted-...', 'f'], {'retries': 2}, ['dedupgraph-hoisted-...'])

dask reads annotations (``retries``, ``resources``, ``workers``,
``priority``, custom ones) from the layers of the graph an optimizer
returns, and a plain dict becomes one layer without any: every rewritten
task keeps its layer here, and the hoisted keys, which are data, get a
layer of their own without annotations, so any worker may hold them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Hashable, Mapping
from typing import Any

import xxhash
from dask._task_spec import GraphNode
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

HOISTED_LAYER_PREFIX = "dedupgraph-hoisted-"


def relayered(
    original: HighLevelGraph, rewritten: Mapping[Hashable, Any], changed: Collection[Hashable]
) -> HighLevelGraph:
    """``rewritten`` (a flat graph) laid out in the layers of ``original``, annotations included.

    ``changed``: keys of ``original`` whose task ``rewritten`` replaces.  Keys
    of ``rewritten`` that no layer of ``original`` holds go to one new layer.
    """
    layers: dict[str, Any] = dict(original.layers)
    dependencies = {name: set(deps) for name, deps in original.dependencies.items()}
    placed: set[Hashable] = set()
    touched = []
    for name, layer in original.layers.items():
        keys = list(layer)
        placed.update(keys)
        if any(key in changed for key in keys):
            layers[name] = MaterializedLayer(
                {key: rewritten[key] for key in keys},
                annotations=layer.annotations,
                collection_annotations=layer.collection_annotations,
            )
            touched.append(name)
    added = {key: node for key, node in rewritten.items() if key not in placed}
    if added:
        name = HOISTED_LAYER_PREFIX + xxhash.xxh64_hexdigest(repr(sorted(map(str, added))).encode())
        layers[name] = MaterializedLayer(added)
        dependencies[name] = set()
        for toucher in touched:
            dependencies[toucher].add(name)
    return HighLevelGraph(layers, dependencies)


def annotated(
    graph: Mapping[Hashable, GraphNode],
    annotations: Mapping[str, Mapping[Hashable, Any]],
    outputs: Collection[Hashable] = (),
    name: str | None = None,
) -> Mapping[Hashable, Any]:
    """``graph`` as a ``HighLevelGraph`` whose layers give each key its ``annotations``.

    >>> from dask._task_spec import Task, TaskRef
    >>> graph = {"a": Task("a", max, 1, 2), "b": Task("b", max, TaskRef("a"), 0), "c": Task("c", min, TaskRef("b"), 9)}
    >>> hlg = annotated(graph, {"retries": {"a": 2, "c": 2}, "priority": {"c": 9}}, outputs=["c"], name="c")
    >>> sorted((sorted(layer), layer.annotations) for layer in hlg.layers.values())
    [(['a'], {'retries': 2}), (['b'], None), (['c'], {'retries': 2, 'priority': 9})]
    >>> sorted(hlg.dependencies["c"]) == sorted(n for n in hlg.layers if n != "c")
    True

    ``annotations`` maps each annotation type to the value of each key, as
    ``__dask_annotations__`` gives it.  A layer holds the keys with the same
    annotation types at the same depth of the graph (depth keeps the layers
    acyclic, as dask's culling needs); a value that differs between its keys
    is looked up per key.  The ``outputs`` of a collection (the keys nothing
    in ``graph`` needs) sit apart, and the layer of the first is called
    ``name`` (what the collection's ``__dask_layers__`` names) and depends on
    every other layer, so that culling from it keeps them all.  Without any
    annotation on ``graph``'s keys, ``graph`` comes back as it is.
    """
    types_of: dict[Hashable, tuple[str, ...]] = {}
    for kind, values in annotations.items():
        for key in values:
            if key in graph:
                types_of[key] = (*types_of.get(key, ()), kind)
    if not types_of:
        return graph
    depth = _depths(graph)
    is_output = set(outputs).intersection(graph)
    groups: dict[tuple[tuple[str, ...], int | None], dict[Hashable, Any]] = defaultdict(dict)
    for key, node in graph.items():
        groups[types_of.get(key, ()), None if key in is_output else depth[key]][key] = node
    first = next((k for k in outputs if k in graph), None)
    layer_of: dict[Hashable, str] = {}
    layers: dict[str, Any] = {}
    for (kinds, level), part in groups.items():
        label = "output" if level is None else str(level)
        layer_name = f"dedupgraph-annotated-{label}-" + xxhash.xxh64_hexdigest(repr((kinds, sorted(map(str, part)))).encode())
        if name is not None and first in part:
            layer_name = name
        layers[layer_name] = MaterializedLayer(part, annotations={kind: _per_key(annotations[kind], part) for kind in kinds} or None)
        layer_of.update(dict.fromkeys(part, layer_name))
    dependencies: dict[str, set[str]] = {layer_name: set() for layer_name in layers}
    for key, node in graph.items():
        dependencies[layer_of[key]].update(layer_of[dep] for dep in node.dependencies if dep in layer_of)
        dependencies[layer_of[key]].discard(layer_of[key])
    if name in layers:
        dependencies[name] = set(layers) - {name}
    return HighLevelGraph(layers, dependencies)


def _depths(graph: Mapping[Hashable, GraphNode]) -> dict[Hashable, int]:
    """Each key's longest path to a key without dependencies in ``graph`` (iteratively: graphs are deep)."""
    depth: dict[Hashable, int] = {}
    for root in graph:
        stack = [root]
        while stack:
            key = stack[-1]
            if key in depth:
                stack.pop()
                continue
            pending = [d for d in graph[key].dependencies if d in graph and d not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[key] = 1 + max((depth[d] for d in graph[key].dependencies if d in graph), default=-1)
    return depth


def layer_annotations(graph: Any) -> dict[str, dict[Hashable, Any]]:
    """The annotations of each key of a ``HighLevelGraph``, as dask reads them from its layers.

    >>> layer = MaterializedLayer({"a": 1, "b": 2}, annotations={"priority": lambda key: ord(key)})
    >>> layer_annotations(HighLevelGraph({"x": layer}, {"x": set()}))
    {'priority': {'a': 97, 'b': 98}}
    """
    out: dict[str, dict[Hashable, Any]] = {}
    for layer in getattr(graph, "layers", {}).values():
        for kind, value in (layer.annotations or {}).items():
            out.setdefault(kind, {}).update({key: value(key) if callable(value) else value for key in layer})
    return out


def _per_key(values: Mapping[Hashable, Any], keys: Mapping[Hashable, Any]) -> Any:
    """One value if every key has the same; else a lookup dask calls per key (and that pickles)."""
    mine = {key: values[key] for key in keys}
    first = next(iter(mine.values()))
    if not callable(first) and all(_same(value, first) for value in mine.values()):
        return first
    return mine.__getitem__


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # values whose == raises or is ambiguous (arrays) are looked up per key
        return False
