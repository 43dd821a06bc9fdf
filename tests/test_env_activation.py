"""DASK_DEDUPGRAPH__ENABLED: the pass switched on in any process, by the installed startup hook.

Every test runs a new interpreter: the hook acts at start-up, and the pass
must be on without any import of dedupgraph in the program.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import timeit
from pathlib import Path

import pytest

PTH = "dedupgraph_startup.pth"
REPO = Path(__file__).resolve().parent.parent


def installed_pth() -> Path:
    path = Path(sysconfig.get_paths()["purelib"]) / PTH
    if not path.exists():
        pytest.fail(f"{path} is missing: reinstall the package (pip install -e '.[test]') to install the startup hook")
    return path


def run(code: str, value: str | None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_with({}, code, value, timeout)


def run_with(variables: dict[str, str], code: str, value: str | None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter, with DASK_DEDUPGRAPH__ENABLED=``value`` (None: unset) and ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(variables)
    if value is not None:
        env["DASK_DEDUPGRAPH__ENABLED"] = value
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env, cwd=REPO.parent, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


SHOW = """
    import sys
    import dask
    print(sorted(k for k in ("dedupgraph", "dedupgraph_startup") if k in sys.modules))
    for key in ("array_optimize", "delayed_optimize", "bag_optimize"):
        print(key, type(dask.config.get(key, None)).__name__)
    print("preload", dask.config.get("distributed.client.preload", None))
    print("scheduler preload", dask.config.get("distributed.scheduler.preload", None))
"""


def test_the_hook_is_installed_and_matches_the_repository():
    assert installed_pth().read_text() == (REPO / PTH).read_text()


def test_unset_imports_nothing_and_costs_microseconds():
    done = run("import sys; print([m for m in ('dask', 'dedupgraph', 'dedupgraph_startup') if m in sys.modules])", None)
    assert done.stdout.strip() == "[]"
    # the hook's own line, as site runs it at every start-up
    code = compile(installed_pth().read_text(), PTH, "exec")
    saved = os.environ.pop("DASK_DEDUPGRAPH__ENABLED", None)
    try:
        seconds = timeit.timeit(lambda: exec(code, {}), number=10_000) / 10_000
    finally:
        if saved is not None:
            os.environ["DASK_DEDUPGRAPH__ENABLED"] = saved
    print(f"startup hook with the variable unset: {seconds * 1e6:.2f} us")
    assert seconds < 1e-3


@pytest.mark.parametrize(
    "value, first_import",
    [
        ("True", "import dask"),
        ("true", "import dask.array"),
        ("1", "from distributed import Client"),
        ("yes", "import dask.bag"),
        ("True", "import dedupgraph"),  # dedupgraph imports dask itself, halfway through its own import
        ("True", "import dedupgraph.tools.cli"),
    ],
)
def test_true_values_switch_the_pass_on_whatever_is_imported_first(value, first_import):
    done = run(first_import + "\n" + textwrap.dedent(SHOW), value)
    lines = done.stdout.splitlines()
    assert lines[0] == "['dedupgraph', 'dedupgraph_startup']"
    assert lines[1:4] == [
        "array_optimize Deduplicator",
        "delayed_optimize Deduplicator",
        "bag_optimize Deduplicator",
    ]
    assert lines[4] == "preload ['dedupgraph.preload']"
    # a scheduler started in this process (dask scheduler, LocalCluster) runs the scheduler route
    assert lines[5] == "scheduler preload ['dedupgraph.scheduler']"


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
def test_other_values_leave_everything_alone(value):
    done = run(SHOW, value)
    assert done.stdout.splitlines()[0] == "[]"
    assert "Deduplicator" not in done.stdout and "dedupgraph.scheduler" not in done.stdout


END_TO_END = """
    import dask
    from dask import delayed
    from dask.base import collections_to_expr
    from distributed import Client, LocalCluster

    def nth(table, i):
        return table[i]

    table = bytes(range(256)) * 1000  # 256 KB, in every task
    tasks = [delayed(nth)(table, i) for i in range(20)]
    graph = collections_to_expr(tasks).optimize().__dask_graph__()
    print("hoisted", sorted(str(k).rsplit("-", 1)[0] for k in graph if str(k).startswith("dedup-")))
    print("local", dask.compute(*tasks, scheduler="sync") == tuple(range(20)))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        futures = c.compute(tasks)
        print("distributed", c.gather(futures) == list(range(20)))
        print("on the scheduler", c.run_on_scheduler(
            lambda dask_scheduler: [str(k).rsplit("-", 1)[0] for k in dask_scheduler.tasks if str(k).startswith("dedup-")]
        ))
"""


def test_end_to_end_without_importing_dedupgraph():
    done = run(END_TO_END, "True")
    assert done.stdout.splitlines() == [
        "hoisted ['dedup-bytes']",
        "local True",
        "distributed True",
        "on the scheduler ['dedup-bytes']",
    ], done.stdout


def test_a_broken_installation_never_breaks_import_dask():
    code = """
        import sys, warnings
        sys.modules["dedupgraph"] = None  # importing it now fails
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import dask.array
        print(type(dask.config.get("array_optimize", None)).__name__)
        print([str(w.message)[:80] for w in caught if "DASK_DEDUPGRAPH__ENABLED" in str(w.message)])
    """
    done = run(code, "True")
    kind, messages = done.stdout.splitlines()
    assert kind != "Deduplicator"
    assert "could not be enabled" in messages


@pytest.mark.slow
def test_a_fresh_virtualenv_install_ships_the_hook(tmp_path):
    """``pip install`` of the repository into a new venv (needs the package index)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)], check=True, timeout=900)
    env = {"PATH": os.environ.get("PATH", ""), "DASK_DEDUPGRAPH__ENABLED": "yes"}
    out = subprocess.run(
        [str(python), "-c", "import dask; print(type(dask.config.get('array_optimize')).__name__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout.strip() == "Deduplicator"


@pytest.mark.parametrize("first_import", ["import dask", "import dedupgraph"])
def test_a_value_that_is_neither_true_nor_false_warns_once(first_import):
    code = f"""
        import sys, warnings
        warnings.simplefilter("always")
        print("dask before", "dask" in sys.modules)
        with warnings.catch_warnings(record=True) as caught:
            {first_import}
            import dask.array
        print(type(dask.config.get("array_optimize", None)).__name__)
        for w in caught:
            if "DASK_DEDUPGRAPH__ENABLED" in str(w.message):
                print(f"{{w.category.__name__}}: {{w.message}}")
    """
    lines = run(code, " Maybe ").stdout.splitlines()
    assert lines[:2] == ["dask before False", "NoneType"]  # nothing imported at start-up; the pass off
    [warning] = lines[2:]
    assert warning.startswith("RuntimeWarning: DASK_DEDUPGRAPH__ENABLED=' Maybe ' is neither true nor false")
    assert all(v in warning for v in ("true, 1, yes (the pass on)", "false, 0, no, or unset (off)", "stays off"))


def test_an_invalid_setting_is_reported_once_and_the_computation_runs():
    code = """
        import dask.array as da
        x = da.ones(10, chunks=2).map_blocks(lambda b, t: b + len(t), list(range(40_000)))
        print(int(x.sum().compute()))
        print(int(x.sum().compute(scheduler="sync")))
    """
    done = run_with({"DASK_DEDUPGRAPH__MIN_BYTES": "banana"}, code, "True")
    assert done.stdout.split() == ["400010", "400010"]
    assert done.stderr.count("banana") == 1, done.stderr
    assert "min-bytes" in done.stderr and "RuntimeWarning" in done.stderr


def test_clients_log_no_preload_lines_about_dedupgraph_and_keep_the_others(tmp_path):
    (tmp_path / "otherpreload.py").write_text("def dask_setup(client):\n    pass\n")
    code = """
        import logging, sys
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=0, processes=False, dashboard_address=None, silence_logs=False) as cluster:
            print("route", "dedupgraph-route" in cluster.scheduler.plugins)
            with Client(cluster) as client:
                print("client preloads", [p.name for p in client.preloads])
    """
    done = run_with(
        {"DASK_DISTRIBUTED__CLIENT__PRELOAD": '["otherpreload"]', "PYTHONPATH": str(tmp_path)}, code, "True"
    )
    lines = done.stdout.splitlines()
    assert "route True" in lines and "client preloads ['otherpreload', 'dedupgraph.preload']" in lines
    preloading = [line for line in lines if line.startswith("distributed.preloading")]
    assert [line for line in preloading if "dedupgraph" in line] == []
    assert {
        "distributed.preloading INFO Creating preload: otherpreload",
        "distributed.preloading INFO Import preload module: otherpreload",
        "distributed.preloading INFO Run preload setup: otherpreload",
    } <= set(preloading)


def test_new_clients_keep_an_optimizer_of_the_users_own():
    code = """
        import dask
        from distributed import Client, LocalCluster

        def mine(dsk, keys, **kwargs):
            return dsk

        dask.config.set(array_optimize=mine)  # after the hook switched the pass on
        with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, Client(cluster):
            print(dask.config.get("array_optimize") is mine, type(dask.config.get("delayed_optimize")).__name__)
    """
    assert run(code, "True").stdout.split() == ["True", "Deduplicator"]
