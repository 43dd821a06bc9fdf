"""The command line, run as installed: ``dedupgraph ...``, ``python -m dedupgraph``, ``dask dedupgraph ...``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import dask
import distributed
import pytest

import dedupgraph
from dedupgraph.tools.cli import info_text

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    done = subprocess.run(
        [*args], env={**clean, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=180
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_info_in_a_plain_process():
    out = run(str(BIN / "dedupgraph"), "info").stdout
    assert out.startswith(f"dedupgraph {dedupgraph.__version__}\n")
    assert f"dask {dask.__version__}, distributed {distributed.__version__}" in out
    assert "pass: off" in out and "client preload" not in out
    assert "min-bytes   auto" in out and "floor-bytes 4.00 kiB (4096)" in out and "hint-bytes  10.00 MiB" in out
    assert "merge-equal immutable" in out and "share       process" in out and "share-limit 50% of /dev/shm" in out
    assert "check-mutation False" in out


def test_info_names_the_environment_route_preload_and_settings():
    env = {
        "DASK_DEDUPGRAPH__ENABLED": "True",
        "DASK_DISTRIBUTED__CLIENT__PRELOAD": '["dedupgraph.preload"]',
        "DASK_DEDUPGRAPH__MIN_BYTES": "1 MiB",
        "DASK_DEDUPGRAPH__EXCLUDE": "mypackage.Model",
    }
    out = run(sys.executable, "-m", "dedupgraph", "info", env=env).stdout
    assert "pass: on for array, delayed, bag, by environment (DASK_DEDUPGRAPH__ENABLED)" in out
    assert "client preload: dedupgraph.preload" in out
    assert "min-bytes   1.00 MiB (1048576)" in out and "exclude     mypackage.Model" in out


def test_info_names_the_config_route_and_invalid_settings():
    with dedupgraph.enable(min_count=3):
        text = info_text()
    assert "pass: on for array, delayed, bag, by dask config" in text and "min-count   3" in text
    with dask.config.set(array_optimize=dedupgraph.dedup):
        assert "pass: on for array, by dask config" in info_text()
    with dask.config.set({"dedupgraph.min-count": 0}):
        assert "settings: invalid: dedupgraph setting 'min-count' must be >= 1" in info_text()


SCRIPT = """
    import sys
    import dask, dask.array as da, numpy as np
    from dask import delayed
    from distributed import Client, LocalCluster

    class Mapper:
        def __init__(self):
            self.table = list(range(30_000))

    def use(block, m):
        return block + len(m.table)

    m = Mapper()
    x = da.zeros((20, 10), chunks=(1, 10)).map_blocks(use, m, meta=np.array(()))
    print("dry-run", dask.config.get("dedupgraph.dry-run"), "args", sys.argv[1:])
    print("total", float(x.sum().compute()))
    graph = dict(dask.optimize(x)[0].__dask_graph__())
    print("hoisted", [k for k in graph if str(k).startswith("dedup-")])
    print("delayed", sum(dask.compute(*[delayed(use)(i, m) for i in range(5)])))
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as c, Client(c) as client:
        print("distributed", float(client.compute(x.sum()).result()))
    if "--fail" in sys.argv:
        raise RuntimeError("the script failed")
    sys.exit(4)
"""


def test_inspect_runs_the_script_in_dry_run_and_reports_every_graph(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = run(str(BIN / "dedupgraph"), "inspect", "-v", str(script), "--day", "3", cwd=tmp_path, check=False)
    assert done.returncode == 4, done.stderr[-3000:]
    out = done.stdout
    # the script ran as itself, with its arguments, results unchanged and graphs not rewritten
    assert "dry-run True args ['--day', '3']" in out
    assert f"total {20 * 10 * 30_000:.1f}" in out and f"distributed {20 * 10 * 30_000:.1f}" in out
    assert "hoisted []" in out and f"delayed {sum(range(5)) + 5 * 30_000}" in out
    # one report per computation, at the script's line; dask.optimize is reported too
    assert "analysis.py computed 4 graphs (dry run: nothing changed)" in out
    sites = [line.rsplit(" ", 1)[1] for line in out.splitlines() if line.startswith("graph ")]
    assert sites == ["analysis.py:17", "analysis.py:18", "analysis.py:20", "analysis.py:22"]
    reports = out.split("\ngraph ")[1:]
    assert all("Mapper" in r and "would hoist 1 object" in r for r in reports)
    assert "shared by 20 tasks" in reports[0] and "shared by 5 tasks" in reports[2]
    # -v: the pass's own dry-run lines
    assert "dedupgraph INFO: dry run: would hoist 1 object" in done.stderr


def test_inspect_reports_what_ran_before_a_failure(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = run(str(BIN / "dedupgraph"), "inspect", str(script), "--fail", cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert "RuntimeError: the script failed" in done.stderr
    assert "computed 4 graphs" in done.stdout


CHANGES = """
    import dask, dask.array as da, numpy as np
    from dask import delayed
    from distributed import Client, LocalCluster

    class Buffer:
        def __init__(self):
            self.data = np.zeros(100_000)
            self.filled = 0

    def fill(i, buf):
        buf.filled += 1
        return i

    def total(block, buf):
        return block + buf.data.sum()

    if __name__ == "__main__":
        buf = Buffer()
        print("processes", sum(dask.compute(*[delayed(fill)(i, buf) for i in range(6)], scheduler="processes")))
        print("threads", float(da.ones((8, 4), chunks=(1, 4)).map_blocks(total, buf).sum().compute(scheduler="threads")))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c):
            print("cluster", sum(dask.compute(*[delayed(fill)(i, buf) for i in range(6)])))
"""


def test_inspect_check_mutation_names_the_functions_that_change_a_hoisted_object(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(CHANGES))
    out = run(str(BIN / "dedupgraph"), "inspect", "--check-mutation", str(script), cwd=tmp_path).stdout
    # results as without dedupgraph, the pass on
    assert "processes 15\nthreads 32.0\ncluster 15\n" in out
    assert "analysis.py computed 3 graphs (check-mutation: the pass on)" in out
    # changed in a local process pool and in a LocalCluster's workers, reported once; the reader is not named
    assert out.endswith(
        "mutation check: 1 function changed a hoisted object it received:\n"
        "  __main__.fill changed a __main__.Buffer; keep it per task: dedupgraph.keep_inline(obj) for this "
        "object, or dedupgraph.enable(exclude=['__main__.Buffer']) for its type\n"
    )


def test_inspect_check_mutation_of_a_script_that_only_reads(tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = run(str(BIN / "dedupgraph"), "inspect", "--check-mutation", str(script), cwd=tmp_path, check=False)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "dry-run False" in done.stdout and f"total {20 * 10 * 30_000:.1f}" in done.stdout
    assert "hoisted ['dedup-Mapper-" in done.stdout  # the pass really ran
    assert "mutation check: no function changed a hoisted object it received (in this host's processes)." in done.stdout
    assert "check-mutation" not in done.stderr


def test_inspect_a_script_without_dask(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text("print('hello')\n")
    out = run(str(BIN / "dedupgraph"), "inspect", str(script)).stdout
    assert out.startswith("hello\n") and "plain.py computed no dask collections" in out


def test_dask_cli_has_the_commands():
    out = run(str(BIN / "dask"), "dedupgraph", "--help").stdout
    assert out.startswith("Usage: dask dedupgraph") and all(c in out for c in ("bench", "info", "inspect"))
    assert run(str(BIN / "dask"), "dedupgraph", "info").stdout.startswith("dedupgraph ")
    assert run(str(BIN / "dedupgraph"), "--version").stdout.strip() == f"dedupgraph, version {dedupgraph.__version__}"


def test_bench_checks_its_arguments():
    done = run(str(BIN / "dedupgraph"), "bench", "--chunks", "5", check=False)
    assert done.returncode == 2 and "--chunks" in done.stderr and "two chunk counts" in done.stderr
    done = run(str(BIN / "dedupgraph"), "bench", "--collections", "matrix", check=False)
    assert done.returncode == 2 and "--collections" in done.stderr
    assert "--quick" in run(sys.executable, "-m", "dedupgraph.benchmarks.suite", "--help").stdout


def test_bench_choices_are_the_suites():
    from dedupgraph.benchmarks import suite
    from dedupgraph.tools.cli import bench

    choices = {p.name: tuple(p.type.choices) for p in bench.params if isinstance(p.type, click.Choice)}
    assert choices == {"modes": suite.MODES, "collections": suite.COLLECTIONS, "sizes": tuple(suite.SIZES)}


@pytest.mark.parametrize(
    "flags, host_part, repeat_part",
    [((), True, True), (("--no-host-memory",), False, True), (("--no-repeat",), True, False)],
)
def test_bench_skips_the_host_and_repeat_parts_when_asked(monkeypatch, tmp_path, flags, host_part, repeat_part):
    from click.testing import CliRunner

    from dedupgraph.benchmarks import suite
    from dedupgraph.tools.cli import bench

    plans = []

    def recorded(plan, output, progress):
        plans.append(plan)
        report = output / "results.md"
        report.write_text("")
        return report

    monkeypatch.setattr(suite, "run", recorded)
    result = CliRunner().invoke(bench, ["--output", str(tmp_path), "--collections", "bag", *flags])
    assert result.exit_code == 0, result.output
    (plan,) = plans
    assert plan.collections == ("bag",) and (plan.host_memory is not None) is host_part
    assert (plan.repeat is not None) is repeat_part


def test_info_names_the_scheduler_preload_of_this_process():
    assert "scheduler preload" not in info_text()
    with dedupgraph.enable():
        assert "scheduler preload: dedupgraph.scheduler, so a scheduler started here (LocalCluster) runs the scheduler route" in info_text()


def test_info_asks_a_scheduler_whether_it_runs_the_route():
    from distributed import LocalCluster

    from dedupgraph.tools.cli import scheduler_text

    for preloads, expected in (([], "scheduler route: off (the route is not switched on"), (["dedupgraph.scheduler"], "scheduler route: on")):
        with dask.config.set({"distributed.scheduler.preload": preloads}):
            with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
                text, ok = scheduler_text(cluster.scheduler_address)
                plugins = cluster.scheduler.plugins
        assert ok and text.startswith(f"scheduler {cluster.scheduler_address}: dedupgraph {dedupgraph.__version__}\n")
        assert expected in text and "min-bytes=auto" in text and "floor-bytes=4096" in text
        assert "dedupgraph-hint" not in plugins  # asking changes nothing there
    text, ok = scheduler_text("tcp://127.0.0.1:1", timeout=2)
    assert not ok and text.startswith("scheduler tcp://127.0.0.1:1: cannot connect")


MAKE_SEGMENT = """
    import os, signal, sys
    from dedupgraph.placement import segments as sm
    view = sm.create(sys.argv[1], 2**20, 0.5, lambda write: write(0, b"z" * 2**20))
    print("made", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()   # holds it until told
"""


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory: Linux only")
def test_segments_lists_them_and_cleans_what_killed_processes_left():
    import signal
    import tempfile

    from dedupgraph.placement import segments as sm

    directory = tempfile.mkdtemp(prefix="test-dedupgraph-cli-", dir="/dev/shm")
    env = {sm.DIR_VARIABLE: directory}
    live_digest, dead_digest = "cd" * 16, "ab" * 16

    def holder(digest: str, then: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(MAKE_SEGMENT), digest, then],
            env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout.readline().strip() == "made"
        return proc

    live = holder(live_digest, "wait")  # first: a process that makes a segment sweeps the directory
    try:
        killed = holder(dead_digest, "die")
        assert killed.wait(timeout=60) == -signal.SIGKILL
        names = sorted(os.listdir(directory))
        assert names == sorted([sm.segment_name(live_digest), sm.segment_name(dead_digest)])
        out = run(str(BIN / "dedupgraph"), "segments", env=env).stdout
        lines = out.splitlines()
        assert lines[0] == f"{directory}: 2 dedupgraph segments of this user, 2.00 MiB; 1 mapped by no live process"
        assert lines[1].split() == ["segment", "size", "age", "in", "use"]
        rows = {line.split()[0]: line for line in lines[2:4]}
        assert re.search(r" 1\.00 MiB +\d+ s +no \(left by a process that died\)$", rows[sm.segment_name(dead_digest)])
        assert re.search(r" 1\.00 MiB +\d+ s +yes$", rows[sm.segment_name(live_digest)])
        assert lines[4] == "dedupgraph segments --clean removes those mapped by no live process."
        out = run(str(BIN / "dedupgraph"), "segments", "--clean", env=env).stdout
        assert out.startswith(f"removed 1 segment that no live process mapped (1.00 MiB)\n  {sm.segment_name(dead_digest)}\n")
        assert os.listdir(directory) == [sm.segment_name(live_digest)]  # in use: left alone
        live.communicate("", timeout=60)  # its last user exits: removed
        assert os.listdir(directory) == []
        assert run(str(BIN / "dedupgraph"), "segments", env=env).stdout == f"{directory}: no dedupgraph segments of this user\n"
    finally:
        live.kill()
        live.wait()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
