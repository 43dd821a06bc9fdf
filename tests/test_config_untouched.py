"""enable() and disable() as context managers leave alone the configuration they did not set.

``dask.config.set`` used as a context manager deletes, on exit, every
top-level key that did not exist when it was entered, even one that an
import of distributed filled in meanwhile.  ``enable()`` writes
``distributed.scheduler.preload``: each scenario runs in a fresh interpreter,
so that distributed is imported exactly where the scenario says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Printed by every scenario: what is missing or changed after the blocks, against distributed's
# defaults and against dedupgraph's configuration before them.
REPORT = """
    import json
    import dask.config

    def leaves(tree, path=()):
        if isinstance(tree, dict) and tree:
            for key, value in tree.items():
                yield from leaves(value, (*path, key))
        else:
            yield path, tree

    def lookup(path):
        d = dask.config.config
        for key in path:
            if not isinstance(d, dict) or key not in d:
                return "<missing>"
            d = d[key]
        return d

    import distributed  # registers distributed's defaults, if nothing has yet
    defaults = {}
    for layer in dask.config.defaults:
        if "distributed" in layer:
            defaults.update(dict(leaves(layer["distributed"], ("distributed",))))
    missing = sorted(".".join(p) for p, v in defaults.items() if lookup(p) == "<missing>")
    changed = sorted(".".join(p) for p, v in defaults.items() if lookup(p) not in ("<missing>", v))
    ours = {key: repr(dask.config.get(key, None)) for key in ("array_optimize", "delayed_optimize", "bag_optimize")}
    print(json.dumps({
        "missing": missing[:5], "n_missing": len(missing), "changed": changed,
        "dedupgraph": dask.config.get("dedupgraph") == DEDUPGRAPH_BEFORE,
        "optimizers": ours == OPTIMIZERS_BEFORE,
        **RESULTS,
    }))
"""

PROLOGUE = """
    import copy
    import dask, dask.config, dask.array as da
    import dedupgraph
    DEDUPGRAPH_BEFORE = copy.deepcopy(dask.config.get("dedupgraph"))
    OPTIMIZERS_BEFORE = {key: repr(dask.config.get(key, None)) for key in ("array_optimize", "delayed_optimize", "bag_optimize")}
    RESULTS = {}
"""

CLUSTER = """
    def run_on_a_cluster(label):
        from distributed import Client, LocalCluster

        x = da.ones(8, chunks=2).map_blocks(lambda b, t: b + len(t), bytes(range(256)) * 400)
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            RESULTS[label] = int(client.compute(x.sum()).result())
            RESULTS[label + " route"] = "dedupgraph-route" in cluster.scheduler.plugins
"""


def run(body: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    code = "\n".join(textwrap.dedent(part) for part in (PROLOGUE, CLUSTER, body, REPORT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def untouched(found: dict) -> None:
    assert found["n_missing"] == 0, f"{found['n_missing']} distributed settings gone, e.g. {found['missing']}"
    assert found["changed"] == []
    assert found["dedupgraph"] and found["optimizers"]


EXPECTED = 8 * (1 + 256 * 400)  # the cluster's result, with and without the pass


# Where distributed is first imported, and where a LocalCluster starts, relative to the block.
SCENARIOS = {
    "distributed imported before": (
        """
        import distributed
        with dedupgraph.enable():
            run_on_a_cluster("inside")
        """,
        {"inside": EXPECTED, "inside route": True},
    ),
    "distributed imported inside": (
        """
        with dedupgraph.enable(min_count=3):
            import distributed
        """,
        {},
    ),
    "a cluster inside, another after": (
        """
        with dedupgraph.enable():
            run_on_a_cluster("inside")  # imports distributed, starts a scheduler with the route
        run_on_a_cluster("after")
        """,
        {"inside": EXPECTED, "inside route": True, "after": EXPECTED, "after route": False},
    ),
    "distributed imported after": (
        """
        with dedupgraph.enable():
            pass
        import distributed
        run_on_a_cluster("after")
        """,
        {"after": EXPECTED, "after route": False},
    ),
}


def test_enable_as_a_context_manager_keeps_what_it_did_not_set():
    wrong = {}
    for name, (body, results) in SCENARIOS.items():
        found = run(body)
        try:
            untouched(found)
            assert {k: found.get(k) for k in results} == results
        except AssertionError as e:
            wrong[name] = str(e)
    assert wrong == {}


def test_disable_and_nested_blocks_keep_what_they_did_not_set():
    found = run(
        """
        with dedupgraph.enable():
            with dedupgraph.disable():
                import distributed
                RESULTS["off inside"] = dask.config.get("distributed.scheduler.preload")
            RESULTS["on again"] = dask.config.get("distributed.scheduler.preload")
            with dedupgraph.enable(min_count=5):
                run_on_a_cluster("nested")
                RESULTS["min-count"] = dask.config.get("dedupgraph.min-count")
            RESULTS["min-count after"] = dask.config.get("dedupgraph.min-count")
        """
    )
    untouched(found)
    assert found["off inside"] == [] and found["on again"] == ["dedupgraph.scheduler"]
    assert found["nested"] == EXPECTED and found["nested route"]
    assert (found["min-count"], found["min-count after"]) == (5, 2)
