"""The package's layout: three wings, no import circles, no private names across modules.

- ``dedupgraph.core``, the pass, imports nothing of the routes, placement or the tools;
- ``dedupgraph.placement`` (where a hoisted object lives) imports no route or tool,
  and the routes reach it through its one entry point, the package itself;
- each folder holds about a dozen modules at most;
- no module imports, directly or through others, a module that imports it;
- no module uses another dedupgraph module's private (underscore) names;
- every module imports on its own in a fresh interpreter, and importing
  ``dedupgraph`` changes no configuration beyond registering its defaults.

Imports are read from the source, those inside functions included: a lazy
import is still a dependency, and a circle through one breaks as soon as
some caller imports in the other order.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import dedupgraph

PACKAGE = Path(dedupgraph.__file__).parent
STARTUP = PACKAGE.parent / "dedupgraph_startup.py"
# the pass may use these besides itself: settings and the dask internals it is built on
CORE_MAY_IMPORT = ("dedupgraph.core", "dedupgraph.settings", "dedupgraph.compat", "dedupgraph.once")


def module_files() -> dict[str, Path]:
    """Module name -> source file: the package, its benchmarks (``benchmarks/`` in the repository), the startup hook."""
    found = {"dedupgraph_startup": STARTUP}
    benchmarks = importlib.util.find_spec("dedupgraph.benchmarks")
    assert benchmarks is not None and benchmarks.origin is not None
    for root, prefix in ((PACKAGE, "dedupgraph"), (Path(benchmarks.origin).parent, "dedupgraph.benchmarks")):
        for path in sorted(root.rglob("*.py")):
            parts = (*prefix.split("."), *path.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def imported_modules(name: str, tree: ast.AST) -> set[str]:
    """The modules of ours that ``tree`` (module ``name``) imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return {m for m in out if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, ast.parse(path.read_text())) for name, path in MODULES.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_lazy_and_relative_imports():
    tree = ast.parse("def f():\n    from dedupgraph.core import plan\n    from . import settings\n")
    assert imported_modules("dedupgraph.routes.config", tree) == {"dedupgraph.core", "dedupgraph.core.plan", "dedupgraph.routes"}
    assert imported_modules("dedupgraph", ast.parse("from . import settings")) == {"dedupgraph.settings"}


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_pass_imports_nothing_of_the_routes_placement_or_the_tools():
    graph = import_graph()
    wrong = {
        name: sorted(m for m in imports if m.startswith("dedupgraph") and not m.startswith(CORE_MAY_IMPORT))
        for name, imports in graph.items()
        if name.startswith("dedupgraph.core")
    }
    assert {name: ms for name, ms in wrong.items() if ms} == {}


def test_the_three_wings_exist_and_hold_the_stages_routes_placement_and_tools():
    names = set(MODULES)
    stages = ("fingerprint", "candidates", "plan", "rewrite", "pipeline", "layer_hoisting", "optimizers")
    assert {f"dedupgraph.core.{m}" for m in stages} <= names
    assert {f"dedupgraph.routes.{m}" for m in ("config", "activation", "deduplicate", "materialize")} <= names
    distributed = ("client", "wire", "plugin", "hook", "submissions")
    assert {f"dedupgraph.routes.distributed.{m}" for m in distributed} <= names
    assert {f"dedupgraph.placement.{m}" for m in ("scatter", "host", "segments")} <= names
    assert {f"dedupgraph.tools.{m}" for m in ("report", "hint", "cli")} <= names


def test_placement_imports_no_route_or_tool():
    graph = import_graph()
    wrong = {
        name: sorted(m for m in imports if m.startswith(("dedupgraph.routes", "dedupgraph.tools")))
        for name, imports in graph.items()
        if name.startswith("dedupgraph.placement")
    }
    assert {name: ms for name, ms in wrong.items() if ms} == {}


def test_the_routes_reach_placement_through_its_entry_point_only():
    graph = import_graph()
    wrong = {
        name: sorted(m for m in imports if m.startswith("dedupgraph.placement."))
        for name, imports in graph.items()
        if name.startswith("dedupgraph.routes")
    }
    assert {name: ms for name, ms in wrong.items() if ms} == {}


def test_each_folder_holds_about_a_dozen_modules_at_most():
    folders: dict[str, int] = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py" and name.startswith("dedupgraph."):
            folders[name.rsplit(".", 1)[0]] = folders.get(name.rsplit(".", 1)[0], 0) + 1
    assert {folder: n for folder, n in folders.items() if n > 13} == {}


def test_one_graph_alias_and_no_flag_under_a_lock_but_once():
    # one name and one home per idea: the task graph's type, and "say it once per process"
    homes = {name for name, path in MODULES.items() if "\nGraph = " in path.read_text()}
    assert homes == {"dedupgraph.core.pipeline"}
    flags = {name for name, path in MODULES.items() if "_warned" in path.read_text() or "_told = False" in path.read_text()}
    assert flags == set()


def private_uses(name: str, tree: ast.AST) -> list[str]:
    """Private names of other dedupgraph modules that ``tree`` imports or reads."""
    out: list[str] = []
    aliases: dict[str, str] = {}  # a local name bound to one of our modules -> that module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dedupgraph"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{node.module}.{alias.name}")
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != name:
                out.append(f"{aliases[node.value.id]}.{node.attr}")
    return out


def test_the_private_name_reader_sees_both_spellings():
    tree = ast.parse("from dedupgraph.core.plan import _x\nfrom dedupgraph.placement import host as h\nh._y()\n")
    assert private_uses("dedupgraph.tools.report", tree) == ["dedupgraph.core.plan._x", "dedupgraph.placement.host._y"]


def test_no_module_uses_another_modules_private_names():
    found = {name: private_uses(name, ast.parse(path.read_text())) for name, path in MODULES.items()}
    assert {name: uses for name, uses in found.items() if uses} == {}


def import_alone(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # __main__ runs the CLI when imported: that is its job
    names = [n for n in MODULES if n != "dedupgraph.__main__"]
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(names, pool.map(import_alone, names)))
    assert {n: d.stderr[-800:] for n, d in done.items() if d.returncode != 0} == {}


@pytest.mark.parametrize("module", ["dedupgraph", "dedupgraph.scheduler", "dedupgraph.preload"])
def test_importing_changes_no_configuration_beyond_the_defaults(module):
    code = f"""
import copy, json, dask, dask.config, distributed
before = copy.deepcopy(dask.config.config)
import {module}
after = dask.config.config
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
print(json.dumps([changed, after["dedupgraph"] == dask.config.defaults[-1]["dedupgraph"]]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [["dedupgraph"], True]


def test_every_import_of_ours_names_something_that_exists():
    # lazy imports run only on the path that needs them: after a module moves, a stale one
    # would fail there, long after the tests of the move passed
    import importlib

    missing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "dedupgraph"]
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "dedupgraph":
                targets = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, attr in targets:
                if module not in MODULES:
                    missing.append(f"{name}: {module}")
                elif attr is not None and f"{module}.{attr}" not in MODULES and not hasattr(importlib.import_module(module), attr):
                    missing.append(f"{name}: {module}.{attr}")
    assert missing == []
