"""dedupgraph.preload and the env route's guard, against a scheduler that cannot import dedupgraph.

The scheduler and worker of ``bare`` run as ``python -S`` with a site-packages
made of links to everything installed here except dedupgraph (and without
its ``.pth`` files): dask and distributed import, dedupgraph does not.
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import sysconfig
import textwrap
import time
import warnings
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd
import pytest
from dask import delayed
from distributed import Client, LocalCluster

import dedupgraph
import dedupgraph.routes.distributed.client as preload
from dedupgraph.once import Once
from dedupgraph.routes.distributed import client as courier

TESTS_DIR = Path(__file__).resolve().parent
BIG = bytes(range(256)) * 1200  # 300 KB, carried by every task below (bytes: delayed does not traverse them)


def without_dedupgraph(root: Path) -> dict[str, str]:
    """An environment for ``python -S`` with every installed package but dedupgraph."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = root / "site-packages"
    farm.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("dedupgraph", "__editable__", "_dedupgraph")) or name.endswith(".pth"):
            continue
        (farm / name).symlink_to(entry)
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(root), "PYTHONPATH": str(farm)}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """(scheduler file, environment) of a scheduler and a worker that cannot import dedupgraph."""
    root = tmp_path_factory.mktemp("bare")
    env = without_dedupgraph(root)
    check = subprocess.run(
        [sys.executable, "-S", "-c", "import distributed\ntry:\n import dedupgraph\nexcept ImportError: print('hidden')"],
        env=env, cwd=root, capture_output=True, text=True, timeout=60,
    )
    assert check.stdout.strip() == "hidden", check.stderr
    file = root / "scheduler.json"
    common = ["--no-dashboard", "--scheduler-file", str(file)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-S", "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait_for(file)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-S", "-m", "distributed.cli.dask_worker", "--nthreads", "1", "--no-nanny", *common],
                env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        with Client(scheduler_file=str(file), set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
        yield str(file), env
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def _wait_for(file: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (file.exists() and file.read_text().strip()):
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)
    json.loads(file.read_text())


@pytest.fixture
def fresh_warning(monkeypatch):
    """The once-per-process warning, as in a new process."""
    monkeypatch.setattr(preload, "_problem_told", Once())


def _big_tasks():
    return [delayed(operator.getitem)(BIG, i) for i in range(8)]


def test_the_scheduler_really_cannot_import_dedupgraph(bare):
    # without the guard, the pass makes every computation on it fail
    file, _ = bare
    with Client(scheduler_file=file, set_as_default=False) as c, dedupgraph.enable():
        with pytest.raises(Exception, match="deserializ|dedupgraph"):
            c.gather(c.compute(_big_tasks()))


def test_preload_switches_the_pass_on_when_the_scheduler_has_dedupgraph():
    dedupgraph.disable()
    with dask.config.set({"distributed.client.preload": ["dedupgraph.preload"]}):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
            assert dask.config.get("array_optimize") is dedupgraph.dedup
            assert dask.config.get("delayed_optimize") is dedupgraph.dedup_delayed
            assert dask.config.get("bag_optimize") is dedupgraph.dedup_bag
            assert preload.scheduler_imports_dedupgraph(c)
            assert c.gather(c.compute(_big_tasks())) == list(range(8))


def test_preload_warns_once_and_leaves_the_pass_off(bare, fresh_warning):
    file, _ = bare
    dedupgraph.enable()
    with dask.config.set({"distributed.client.preload": ["dedupgraph.preload"]}):
        with pytest.warns(RuntimeWarning, match="cannot import dedupgraph.*install dedupgraph") as record:
            with Client(scheduler_file=file, set_as_default=False) as c:
                assert not isinstance(dask.config.get("delayed_optimize"), dedupgraph.Deduplicator)
                assert c.gather(c.compute(_big_tasks())) == list(range(8))
        assert len([w for w in record if "cannot import dedupgraph" in str(w.message)]) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second client: no second warning
            with Client(scheduler_file=file, set_as_default=False) as c:
                assert c.gather(c.compute(_big_tasks())) == list(range(8))


def test_deduplicate_works_against_it_without_the_lost_object_task(bare):
    file, _ = bare
    with Client(scheduler_file=file, set_as_default=False) as c:
        assert not preload.scheduler_imports_dedupgraph(c)
        (tasks,) = dedupgraph.deduplicate(_big_tasks(), client=c, min_bytes="64 KiB")
        assert [k for k in c.futures if str(k).startswith("dedup-bytes-")]
        assert c.gather(c.compute(tasks)) == list(range(8))
        # DataFrames: rebuilt with dask's own from_graph, which any scheduler reads
        df = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=8)
        # a lambda travels by value: the scheduler cannot import this test module
        series = df.x.map_partitions(lambda part, blob: part + len(blob), BIG, meta=df.x._meta)
        (out,) = dedupgraph.deduplicate(series, client=c)
        assert type(out.expr).__name__ == "FromGraph"
        pd.testing.assert_series_equal(c.compute(out).result(), series.compute(scheduler="sync"))


ENV_ROUTE_SCRIPT = textwrap.dedent(
    """
    import operator, sys, warnings
    import dask
    from dask import delayed
    from distributed import Client

    BIG = bytes(range(256)) * 1200
    tasks = [delayed(operator.getitem)(BIG, i) for i in range(8)]
    print("on before:", type(dask.config.get("delayed_optimize")).__name__)
    for _ in range(2):  # two clients: one warning
        with Client(scheduler_file=sys.argv[1]) as c:
            assert c.gather(c.compute(tasks)) == list(range(8))
    print("on after:", type(dask.config.get("delayed_optimize")).__name__)
    """
)


def _with_the_variable(script, file, cwd):
    """``script`` run with DASK_DEDUPGRAPH__ENABLED (and no preload of ours from this process), succeeding."""
    env = {**os.environ, "DASK_DEDUPGRAPH__ENABLED": "True"}
    env.pop("DASK_DISTRIBUTED__CLIENT__PRELOAD", None)
    done = subprocess.run([sys.executable, "-c", script, file], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_env_route_guards_the_first_distributed_computation(bare, tmp_path):
    # a user process with DASK_DEDUPGRAPH__ENABLED and a bare scheduler: no failure, one warning
    done = _with_the_variable(ENV_ROUTE_SCRIPT, bare[0], tmp_path)
    assert "on before: Deduplicator" in done.stdout, done.stdout
    assert "on after: " in done.stdout and "on after: Deduplicator" not in done.stdout
    assert done.stderr.count("cannot import dedupgraph") == 1, done.stderr[-3000:]


ENV_ROUTE_EVERY_KIND = textwrap.dedent(
    """
    import sys
    import numpy as np, pandas as pd
    import dask, dask.array as da, dask.dataframe as dd
    from distributed import Client

    class Blob:  # small to dask's sizeof (distributed itself fails client.map of large keywords)
        def __init__(self):
            self.data = bytes(range(256)) * 1200

        def __len__(self):
            return len(self.data)

    BIG = Blob()

    def with_len(part, blob):
        return part.assign(y=part.x + len(blob))

    def item(x, blob):
        return x + len(blob)

    pdf = pd.DataFrame({"x": np.arange(40)})
    with Client(scheduler_file=sys.argv[1]) as c:
        df = dd.from_pandas(pdf, npartitions=8).map_partitions(with_len, BIG)
        assert c.compute(df).result().sort_index().equals(pdf.assign(y=pdf.x + len(BIG)))
        arr = da.zeros((8, 2), chunks=(1, 2)).map_blocks(lambda b, blob: b + len(blob), BIG)
        assert float(c.compute(arr.sum()).result()) == 16.0 * len(BIG)
        assert c.gather(c.map(item, range(4), blob=BIG)) == [i + len(BIG) for i in range(4)]
        assert c.gather([c.submit(item, i, BIG) for i in range(3)]) == [i + len(BIG) for i in range(3)]
    print("every kind ok")
    """
)


def test_env_route_client_work_is_unaffected_by_a_scheduler_without_dedupgraph(bare, tmp_path):
    # DataFrames, arrays, client.map and submit: the client sends nothing the scheduler cannot read
    done = _with_the_variable(ENV_ROUTE_EVERY_KIND, bare[0], tmp_path)
    assert "every kind ok" in done.stdout
    assert done.stderr.count("cannot import dedupgraph") == 1, done.stderr[-3000:]


def test_the_probe_tells_whether_the_scheduler_runs_the_route():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as c:
            found = c.sync(preload.scheduler_status, c, observe=False)
            assert found["version"] == dedupgraph.__version__ and found["route"] is False
    with dask.config.set({"distributed.scheduler.preload": ["dedupgraph.scheduler"], "distributed.client.preload": ["dedupgraph.preload"]}):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster, set_as_default=False) as c:
                assert c.sync(preload.scheduler_status, c)["route"] is True
                assert courier.attached(c)  # its graphs carry the settings in force here
