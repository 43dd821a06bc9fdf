"""dask's own test suites, without and with the pass: a compatibility check.

    python -m dedupgraph.benchmarks.compat                   # both runs and the comparison
    make compat                                              # the same
    python -m dedupgraph.benchmarks.compat --modules dask/tests/test_delayed.py
    python -m dedupgraph.benchmarks.compat --output compat/  # keep junit XML, logs, counts

dask ships its tests in its wheel.  This runs ``MODULES`` of the installed
dask twice with pytest: plainly, then with the pass forced on by the plugin
``dedupgraph.testing`` (``--dedupgraph-min-bytes=1 --dedupgraph-min-count=2
--dedupgraph-strict``, so the pass hoists in nearly every graph, the functions
and partials that dask repeats in every task included, and a failure of the
pass itself fails the test).  It collects each test's outcome from junit XML
and compares: a test that fails or errors only with the pass on is a
suspect.  Suspects are run once more, alone, both ways; those that again fail
only with the pass are confirmed, the others are reported as flaky.

Confirmed failures that ``KNOWN_STRUCTURAL`` lists are tests asserting the
graph's structure (task counts, key names, ``len(dsk)``, exact graph
equality), which hoisting changes by design.  Any other confirmed failure is
a compatibility bug: the exit status is 1.  It is 2 when a pytest run broke
down (internal error, usage error, nothing collected) or the pass hoisted
nothing (the plugin did not take effect).

Both runs use the same pytest settings, close to dask's own CI (in a temporary
ini file: dask's markers, ``xfail_strict``, dask's warnings as errors), skip
tests marked ``slow`` or ``network`` as dask's CI does by default, and
``--timeout`` per test.  Tests whose optional packages (scipy, zarr, h5py,
cupy, sparse, xarray...) are missing skip in both runs; the most common skip
reasons are printed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

# The test modules of the installed dask, relative to site-packages.
MODULES = (
    "dask/array/tests",
    "dask/tests/test_delayed.py",
    "dask/bag/tests",
    "dask/tests/test_distributed.py",
)

# Tests that fail with the pass on because they assert the structure of the
# graph, which hoisting changes by design (one more key per hoisted object,
# tasks that reference it).  test id -> why.
KNOWN_STRUCTURAL: dict[str, str] = {
    "dask/array/tests/test_array_core.py::test_blockwise_fusion": (
        "a custom scheduler asserts len(dsk) == 4; the hoisted functions add 3 keys"
    ),
    "dask/array/tests/test_creation.py::test_creation_data_producers": (
        "counts nodes whose data_producer is set (== 4); a hoisted key is a DataNode, always a data producer"
    ),
    "dask/array/tests/test_creation.py::test_from_array_getitem_fused": (
        "reads the slices at .args[1] of a fused inner getitem task; with its function hoisted the "
        "task is call(ref, *args), so the arguments shift by one"
    ),
    "dask/array/tests/test_map_blocks.py::test_map_blocks_block_id_fusion": (
        "asserts len(graph) == 20; the hoisted functions add 3 keys"
    ),
    "dask/array/tests/test_overlap.py::test_trim_internal": (
        "asserts len(graph) == 24; the hoisted functions add 3 keys"
    ),
}

# pytest settings for both runs, after dask's own (pyproject.toml, conftest.py).
PYTEST_INI = """\
[pytest]
markers =
    slow: skipped unless --runslow (dask's conftest); deselected here
    network: needs an internet connection; deselected here
    gpu: needs a GPU
    flaky: rerun on failure (pytest-rerunfailures, not installed here)
    array_expr: array-expr only
    normal_and_array_expr: both array implementations
    skip_with_pyarrow_strings: skipped with pyarrow strings
    xfail_with_pyarrow_strings: xfail with pyarrow strings
xfail_strict = true
filterwarnings =
    error:::dask[.*]
    error:::pandas[.*]
    error:::numpy[.*]
    error:::distributed[.*]
    # another cluster on this host holds the dashboard port: distributed warns and takes
    # another port; as an error the cluster fails half-started and later tests hang
    ignore:Port \\d+ is already in use:UserWarning
junit_family = xunit1
"""

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed")
FAILING = ("failed", "error")


@dataclasses.dataclass
class Run:
    """One pytest run: the outcome and first line of the message of each test id."""

    label: str
    returncode: int
    seconds: float
    cpu_seconds: float
    outcomes: dict[str, str]
    messages: dict[str, str]
    skip_reasons: collections.Counter[str]
    stats: dict | None = None  # the plugin's counts (the run with the pass)

    def counts(self) -> dict[str, int]:
        found = collections.Counter(self.outcomes.values())
        return {outcome: found.get(outcome, 0) for outcome in OUTCOMES}


def site_packages() -> Path:
    """Where the installed dask lives: test ids are relative to it."""
    import dask

    return Path(dask.__file__).resolve().parent.parent


def pytest_command(
    targets: Sequence[str],
    junit: Path,
    ini: Path,
    root: Path,
    timeout: int,
    with_pass: bool,
    min_bytes: str,
    min_count: int,
    stats: Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    command = [
        sys.executable, "-m", "pytest", *targets,
        "-c", str(ini), "--rootdir", str(root), "--confcutdir", str(root),
        "-p", "no:cacheprovider", "-q", "-rfE", "--tb=line",
        f"--timeout={timeout}", f"--junitxml={junit}",
        "-m", "not slow and not network", "--continue-on-collection-errors",
    ]  # fmt: skip
    if with_pass:
        command += [
            "-p", "dedupgraph.testing",
            f"--dedupgraph-min-bytes={min_bytes}", f"--dedupgraph-min-count={min_count}",
            "--dedupgraph-strict",
        ]  # fmt: skip
        if stats is not None:
            command.append(f"--dedupgraph-stats={stats}")
    return [*command, *extra]


def run_pytest(label: str, command: list[str], log: Path, root: Path) -> tuple[int, float, float]:
    """Exit code, wall seconds, and CPU seconds of pytest and its children (less sensitive to load)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}  # both runs alike
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    print(f"[{label}] {' '.join(command[2:5])} ... (log: {log})", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    load = os.getloadavg()[0]
    print(f"[{label}] exit {proc.returncode} after {seconds:.0f} s ({cpu:.0f} s CPU; load average now {load:.1f})", flush=True)
    return proc.returncode, seconds, cpu


def test_id(case: ET.Element, root: Path) -> str:
    """The pytest node id of a junit (xunit1) testcase: ``dask/x/tests/test_y.py::Class::name``."""
    file = case.get("file")
    classname = case.get("classname", "")
    name = case.get("name", "")
    if not file:
        return f"{classname}::{name}"
    module = file.removesuffix(".py").replace("/", ".").replace(os.sep, ".")
    rest = classname[len(module) :].lstrip(".") if classname.startswith(module) else ""
    return "::".join(part for part in (file, *rest.split("."), name) if part)


def parse_junit(path: Path, root: Path) -> tuple[dict[str, str], dict[str, str], collections.Counter[str]]:
    """Outcome per test id (``OUTCOMES``), a one-line message for the non-passing ones, skip reasons."""
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    skips: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return outcomes, messages, skips
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = test_id(case, root)
        outcome, message = "passed", ""
        # a test can fail in its call and error in its teardown: the worst counts
        for child in case:
            tag = child.tag
            if tag == "error":
                outcome, message = "error", child.get("message", "")
            elif tag == "failure" and outcome != "error":
                outcome, message = "failed", child.get("message", "")
            elif tag == "skipped" and outcome == "passed":
                kind = child.get("type", "")
                outcome = "xfailed" if kind == "pytest.xfail" else "skipped"
                message = child.get("message", "")
        if outcome == "skipped":
            skips[_skip_reason(message, case)] += 1
        if tid in outcomes and outcomes[tid] in FAILING and outcome not in FAILING:
            continue  # a duplicate entry (setup error and call) keeps the worst
        outcomes[tid] = outcome
        if message:
            messages[tid] = message.strip().splitlines()[0][:300] if message.strip() else ""
    return outcomes, messages, skips


def _skip_reason(message: str, case: ET.Element) -> str:
    """A skip reason to group by: "could not import 'scipy'", or a whole module with its reason."""
    text = message.strip().splitlines()[0] if message.strip() else "(no reason)"
    if text == "collection skipped":  # a whole module: the reason is in the element's text
        skipped = case.find("skipped")
        detail = (skipped.text or "") if skipped is not None else ""
        reason = detail.split("Skipped: ", 1)[-1].rstrip("')\"")
        return f"whole module {case.get('file', '?')}: {_import_reason(reason)}"
    return _import_reason(text)[:100]


def _import_reason(text: str) -> str:
    # "could not import 'scipy': No module named 'scipy'" -> "could not import 'scipy'"
    return text.split(":")[0] if text.startswith("could not import") else text


def run(
    label: str,
    targets: Sequence[str],
    workdir: Path,
    root: Path,
    ini: Path,
    args: argparse.Namespace,
    with_pass: bool,
) -> Run:
    junit = workdir / f"{label}.xml"
    stats = workdir / f"{label}-stats.json" if with_pass else None
    command = pytest_command(
        targets, junit, ini, root, args.timeout, with_pass, args.min_bytes, args.min_count, stats, args.pytest_args
    )
    code, seconds, cpu = run_pytest(label, command, workdir / f"{label}.log", root)
    outcomes, messages, skips = parse_junit(junit, root)
    result = Run(label, code, seconds, cpu, outcomes, messages, skips)
    if stats is not None and stats.exists():
        result.stats = json.loads(stats.read_text())
    return result


def failing_only_with_pass(plain: Run, dedup: Run) -> list[str]:
    """Test ids that fail or error with the pass, and pass (or skip, xfail) without it."""
    return sorted(
        tid
        for tid, outcome in dedup.outcomes.items()
        if outcome in FAILING and plain.outcomes.get(tid, "passed") not in FAILING
    )


def print_counts(runs: Iterable[Run]) -> None:
    print(f"\n{'run':<12}{'wall':>8}{'CPU':>8}" + "".join(f"{o:>9}" for o in OUTCOMES) + f"{'exit':>6}")
    for r in runs:
        counts = r.counts()
        print(
            f"{r.label:<12}{r.seconds:>7.0f}s{r.cpu_seconds:>7.0f}s"
            + "".join(f"{counts[o]:>9}" for o in OUTCOMES)
            + f"{r.returncode:>6}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dedupgraph.benchmarks.compat",
        description="Run dask's own tests without and with the dedupgraph pass, and compare.",
    )
    parser.add_argument(
        "--modules", action="append", default=None,
        help=f"test module or directory, relative to site-packages (repeatable; default: {' '.join(MODULES)})",
    )  # fmt: skip
    parser.add_argument("--timeout", type=int, default=300, help="per-test timeout, seconds (pytest-timeout)")
    parser.add_argument("--min-bytes", default="1", help="min-bytes of the pass (default 1: hoist nearly all)")
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="keep junit XML, logs and counts here")
    parser.add_argument("--no-recheck", action="store_true", help="do not re-run the suspects to rule out flakes")
    parser.add_argument("--only-with-pass", action="store_true", help="skip the plain run (no comparison)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)

    root = site_packages()
    targets = args.modules or list(MODULES)
    missing = [t for t in targets if not (root / t.split("::")[0]).exists()]
    if missing:
        print(f"not in {root}: {', '.join(missing)} (does this dask ship its tests?)", file=sys.stderr)
        return 2
    import dask

    print(f"dask {dask.__version__} tests from {root}: {', '.join(targets)}")
    with tempfile.TemporaryDirectory(prefix="dedupgraph-compat-") as tmp:
        workdir = args.output or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        workdir = workdir.resolve()
        ini = workdir / "pytest.ini"
        ini.write_text(PYTEST_INI)
        runs = []
        plain = None
        if not args.only_with_pass:
            plain = run("plain", targets, workdir, root, ini, args, with_pass=False)
            runs.append(plain)
        dedup = run("dedup", targets, workdir, root, ini, args, with_pass=True)
        runs.append(dedup)
        return report(runs, plain, dedup, workdir, root, ini, args)


def report(
    runs: list[Run], plain: Run | None, dedup: Run, workdir: Path, root: Path, ini: Path, args: argparse.Namespace
) -> int:
    """Print the comparison; the exit status (see the module's doc)."""
    print_counts(runs)
    status = 0
    for r in runs:
        # 0: all passed, 1: some failed; anything else: the run itself broke down
        if r.returncode not in (0, 1) or not r.outcomes:
            print(f"\n{r.label}: pytest exited with {r.returncode} ({len(r.outcomes)} results): see its log")
            status = 2
    skips = (plain or dedup).skip_reasons
    if skips:
        print("\nmost common skip reasons (both runs alike):")
        for reason, n in skips.most_common(12):
            if not reason.startswith("whole module"):
                print(f"  {n:>5}  {reason}")
        modules = sorted(reason for reason in skips if reason.startswith("whole module"))
        if modules:
            print("  whole modules skipped:")
            for reason in modules:
                print(f"         {reason.removeprefix('whole module ')}")
    stats = dedup.stats or {}
    print(
        f"\nthe pass ({stats.get('settings', 'no counts')}): optimized {stats.get('graphs', 0)} graphs "
        f"in {stats.get('tests_with_graphs', 0)} tests, hoisted {stats.get('hoisted_keys', 0)} objects "
        f"in {stats.get('hoisted_graphs', 0)} graphs; {len(stats.get('failures', []))} pass failures; "
        f"local computations with the pass off: {sum(stats.get('off', {}).values())}"
    )
    if stats.get("route_graphs"):
        print(
            f"  of these graphs, the scheduler route of in-process schedulers deduplicated "
            f"{stats['route_graphs']} and hoisted in {stats.get('route_hoisted_graphs', 0)}"
        )
    if not stats.get("hoisted_graphs"):
        print("the pass hoisted in no graph: the plugin did not take effect")
        status = 2
    if plain is None:
        return status

    suspects = failing_only_with_pass(plain, dedup)
    flaky: list[str] = []
    if suspects and not args.no_recheck:
        print(f"\nre-running the {len(suspects)} tests that failed only with the pass, both ways ...")
        again_plain = run("recheck-plain", suspects, workdir, root, ini, args, with_pass=False)
        again_dedup = run("recheck-dedup", suspects, workdir, root, ini, args, with_pass=True)
        confirmed = set(failing_only_with_pass(again_plain, again_dedup))
        flaky = [t for t in suspects if t not in confirmed]
        suspects = [t for t in suspects if t in confirmed]

    new = [t for t in suspects if t not in KNOWN_STRUCTURAL]
    print(f"\nfailing only with the pass: {len(suspects)} ({len(suspects) - len(new)} known structural, {len(new)} not known)")
    for tid in suspects:
        tag = "structural" if tid in KNOWN_STRUCTURAL else "NOT KNOWN "
        print(f"  {tag} {dedup.outcomes[tid]:<6} {tid}")
        detail = KNOWN_STRUCTURAL.get(tid) or dedup.messages.get(tid, "")
        if detail:
            print(f"             {detail}")
    if flaky:
        print(f"\nflaky (failed only with the pass once, not when re-run alone): {len(flaky)}")
        for tid in flaky:
            print(f"  {tid}: {dedup.messages.get(tid, '')}")
    changed = collections.Counter(
        f"{plain.outcomes[t]} -> {o}"
        for t, o in dedup.outcomes.items()
        if t in plain.outcomes and o != plain.outcomes[t] and o not in FAILING
    )
    if changed:
        print("\nother outcome changes with the pass: " + ", ".join(f"{k}: {n}" for k, n in changed.items()))
    stale = sorted(t for t in KNOWN_STRUCTURAL if dedup.outcomes.get(t) == "passed")
    if stale:
        print(f"\nknown structural failures that pass now (remove them from KNOWN_STRUCTURAL): {len(stale)}")
        for tid in stale:
            print(f"  {tid}")
    if new:
        print(f"\nFAIL: {len(new)} tests of dask fail only with the pass and are not known structural failures")
        status = status or 1
    elif status:
        print("\nBROKEN: a run did not complete (see above)")
    else:
        print("\nOK: no unknown failure with the pass on")
    if args.output:
        summary = {
            "runs": {
                r.label: {"seconds": round(r.seconds, 1), "cpu_seconds": round(r.cpu_seconds, 1), "exit": r.returncode}
                | r.counts()
                for r in runs
            },
            "failing_only_with_pass": {t: dedup.messages.get(t, "") for t in suspects},
            "not_known": new,
            "flaky": flaky,
            "pass": stats,
        }
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
