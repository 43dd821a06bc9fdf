"""The command line: ``dedupgraph info``, ``dedupgraph status``, ``dedupgraph inspect script.py``, ``dedupgraph bench``, ``dedupgraph segments``.

    dedupgraph info                          # versions, activation, settings
    dedupgraph info --scheduler tcp://host:8786   # and whether that scheduler runs the route
    dedupgraph status tcp://host:8786        # what its route holds now and did
    dedupgraph inspect analysis.py --day 3   # run it in dry-run mode, report every graph
    dedupgraph inspect --check-mutation analysis.py   # run it checked: which functions change a hoisted object
    dedupgraph bench --quick                 # the benchmark suite, small
    dedupgraph segments [--clean]            # shared-memory segments here; remove the leftovers
    dask dedupgraph info                     # the same commands through dask's CLI

``cli`` is a click group, which is what dask's ``dask_cli`` entry points
must be; ``main`` is the ``dedupgraph`` console script.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from dedupgraph.tools.script import Mutation


@click.group(name="dedupgraph")
@click.version_option(package_name="dedupgraph", prog_name="dedupgraph")
def cli() -> None:
    """dedupgraph: find and hoist the large objects dask copies into every task."""


@cli.command()
@click.option(
    "--scheduler",
    "address",
    metavar="ADDRESS",
    default=None,
    help="Also ask the scheduler at ADDRESS (e.g. tcp://host:8786) whether it runs the scheduler route.",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the scheduler.")
def info(address: str | None, timeout: float) -> None:
    """Versions, whether the pass is on in this process and by which route, and the settings."""
    click.echo(info_text())
    if address is not None:
        text, ok = scheduler_text(address, timeout)
        click.echo(text)
        if not ok:
            sys.exit(1)


def ask_scheduler(address: str, timeout: float, then: Callable[..., Any] | None = None) -> tuple[dict[str, Any] | str, Any] | str:
    """What the scheduler at ``address`` says of its route, and ``then``'s answer if it runs this dedupgraph; or why it cannot be asked.

    The route's status is a dict, or text when the scheduler cannot import dedupgraph
    (``then`` is not run then). The client runs no client preloads: they switch things on.
    """
    import dask.config
    from distributed import Client

    from dedupgraph.routes.distributed.client import scheduler_status

    try:
        with dask.config.set({"distributed.client.preload": []}):
            client = Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001  (reported: the scheduler is unreachable)
        return f"scheduler {address}: cannot connect ({type(e).__name__}: {e})"
    with client:
        found = client.sync(scheduler_status, client, observe=False)
        answer = client.run_on_scheduler(then) if then is not None and not isinstance(found, str) else None
    return found, answer


def scheduler_text(address: str, timeout: float = 10.0) -> tuple[str, bool]:
    """What ``dedupgraph info --scheduler ADDRESS`` adds, and whether the scheduler could be asked."""
    asked = ask_scheduler(address, timeout)
    if isinstance(asked, str):
        return asked, False
    found = asked[0]
    if isinstance(found, str):
        return f"scheduler {address}: route off: {found}", True
    lines = [f"scheduler {address}: dedupgraph {found.get('version')}"]
    if found.get("route"):
        lines.append("  scheduler route: on (every graph it receives is deduplicated)")
    else:
        lines.append(f"  scheduler route: off ({found.get('problem')})")
    settings = found.get("settings")
    if isinstance(settings, dict):
        shown = ", ".join(f"{k.removeprefix('dedupgraph.')}={v}" for k, v in settings.items())
        lines.append(f"  its own settings (for clients that send none): {shown}")
    elif settings is not None:
        lines.append(f"  its own settings: {settings}")
    return "\n".join(lines), True


@cli.command()
@click.argument("address")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the scheduler.")
def status(address: str, timeout: float) -> None:
    """What the route of the scheduler at ADDRESS holds now and did: hoisted objects, totals, the last graphs."""
    text, ok = status_text(address, timeout)
    click.echo(text)
    if not ok:
        sys.exit(1)


def status_text(address: str, timeout: float = 10.0) -> tuple[str, bool]:
    """What ``dedupgraph status ADDRESS`` prints, and whether the scheduler could be asked."""
    from dedupgraph.tools.observe import on_scheduler

    asked = ask_scheduler(address, timeout, then=on_scheduler)
    if isinstance(asked, str):
        return asked, False
    found, answer = asked
    if isinstance(found, str):  # it cannot import this dedupgraph: it could not run the question
        return f"scheduler {address}: {found}", False
    return format_status(address, answer), True


def format_status(address: str, found: dict[str, Any]) -> str:
    """The text of ``dedupgraph status`` for what ``dedupgraph.tools.observe.on_scheduler`` answered.

    >>> found = {"version": "1.0", "route": True, "problem": None, "held": [], "graphs": [], "totals": {
    ...     "graphs_seen": 0, "graphs_deduplicated": 0, "objects_hoisted": {}, "bytes_removed": 0,
    ...     "fallbacks": {}, "failures": {}, "cpu_seconds": 0.0}}
    >>> print(format_status("tcp://s:8786", found))  # doctest: +ELLIPSIS
    scheduler tcp://s:8786: dedupgraph 1.0, scheduler route on
    hoisted objects held now: none
    ...
    """
    from dask.utils import format_bytes

    route = "on" if found.get("route") else f"off ({found.get('problem')})"
    lines = [f"scheduler {address}: dedupgraph {found.get('version')}, scheduler route {route}"]
    held = found.get("held") or []
    if not held:
        lines.append("hoisted objects held now: none")
    else:
        total = sum(h["nbytes"] for h in held)
        saved = sum(h["nbytes"] * max(h["tasks"] - 1, 0) for h in held)
        lines.append(
            f"hoisted objects held now: {len(held)}, {format_bytes(total)}; {format_bytes(saved)} of task payload saved"
        )
        rows = [("type", "size", "tasks", "saved", "workers", "key")]
        for h in held:
            size = format_bytes(h["nbytes"]) + ("" if h["recorded"] else " (estimate)")
            saved_here = format_bytes(h["nbytes"] * max(h["tasks"] - 1, 0))
            rows.append((h["label"], size, str(h["tasks"]), saved_here, ", ".join(h["workers"]), h["key"]))
        lines += _table(rows)
    kept = found.get("kept") or []
    if found.get("route"):
        lines.append(
            f"kept for later computations: {len(kept)}, {format_bytes(found.get('kept_bytes') or 0)}"
            " (dedupgraph.forget() lets go of them)" if kept else "kept for later computations: none"
        )
    t = found.get("totals") or {}
    if found.get("route"):
        hoisted = ", ".join(f"{label} {n}" for label, n in sorted(t["objects_hoisted"].items())) or "none"
        lines += [
            "since the route was switched on:",
            f"  graphs received {t['graphs_seen']}, deduplicated {t['graphs_deduplicated']}",
            f"  objects hoisted {hoisted}; task payload removed {format_bytes(t['bytes_removed'])}",
            f"  fallbacks to the pass: {_counts(t['fallbacks'])}",
            f"  failures (graphs left as plain dask's): {_counts(t['failures'])}",
            f"  route CPU time {t['cpu_seconds']:.3f} s",
        ]
    graphs = found.get("graphs") or []
    if graphs:
        lines.append(f"last {len(graphs)} graph{'' if len(graphs) == 1 else 's'}, the latest last:")
        for g in graphs:
            outcome = g["outcome"] + (f" ({g['cause']})" if g["cause"] else "")
            what = "; ".join(f"{h['label']} {format_bytes(h['nbytes'])} x {h['tasks']} tasks" for h in g["hoisted"])
            extra = f", fallback: {', '.join(g['fallbacks'])}" if g["fallbacks"] else ""
            removed = sum(h["nbytes"] * max(h["tasks"] - 1, 0) for h in g["hoisted"])
            lines.append(
                f"  #{g['number']} {outcome}, {g['tasks']} tasks"
                + (f": {what}, {format_bytes(removed)} removed" if what else "")
                + f"{extra}, CPU {g['cpu_seconds'] * 1000:.1f} ms"
            )
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def info_text() -> str:
    """What ``dedupgraph info`` prints, for this process."""
    import dask
    import distributed
    from dask.utils import format_bytes

    import dedupgraph
    from dedupgraph.tools.status import status
    from dedupgraph.compat import MISSING_INTERNALS

    st = status()
    lines = [
        f"dedupgraph {dedupgraph.__version__}",
        f"dask {dask.__version__}, distributed {distributed.__version__}, "
        f"Python {platform.python_version()} ({sys.executable})",
    ]
    if MISSING_INTERNALS:
        lines.append(f"unsupported dask: lacks {', '.join(MISSING_INTERNALS)}; the pass stays off")
    if st.on:
        route = {
            "environment": "environment (DASK_DEDUPGRAPH__ENABLED)",
            "config": "dask config (dedupgraph.enable() or dask.config.set(array_optimize=dedupgraph.dedup))",
        }[st.routes[0]]
        lines.append(f"pass: on for {', '.join(st.on)}, by {route}")
    elif st.environment_failed:
        lines.append(
            "pass: off, although DASK_DEDUPGRAPH__ENABLED is set: the startup hook did not run "
            "(dedupgraph not installed with pip in this environment, or python -S)"
        )
    else:
        lines.append("pass: off (switch it on with dedupgraph.enable() or DASK_DEDUPGRAPH__ENABLED=True)")
    if st.preload:
        lines.append(
            "client preload: dedupgraph.preload, which switches the pass on at each new Client "
            "whose scheduler can import dedupgraph, and sends this process's settings with each graph "
            "to a scheduler that runs the scheduler route (leaving out the large objects it keeps)"
        )
    if st.scheduler_route:
        lines.append(
            "scheduler preload: dedupgraph.scheduler, so a scheduler started here (LocalCluster) "
            "runs the scheduler route: every graph it receives is deduplicated, DataFrames included"
        )
    try:
        settings = dedupgraph.Settings.from_config()
    except ValueError as e:
        lines.append(f"settings: invalid: {e}")
        return "\n".join(lines)
    lines += [
        "settings (dask config dedupgraph.*, DASK_DEDUPGRAPH__* variables):",
        f"  min-bytes   {'auto' if settings.min_bytes is None else f'{format_bytes(settings.min_bytes)} ({settings.min_bytes})'}",
        f"  floor-bytes {format_bytes(settings.floor_bytes)} ({settings.floor_bytes})",
        f"  min-count   {settings.min_count}",
        f"  dry-run     {settings.dry_run}",
        f"  exclude     {', '.join(settings.exclude) or '(none)'}",
        f"  hint-bytes  {'off' if settings.hint_bytes is None else format_bytes(settings.hint_bytes)}",
        f"  merge-equal {settings.merge_equal}",
        f"  share       {settings.share}",
        f"  share-min-bytes {format_bytes(settings.share_min_bytes)} ({settings.share_min_bytes})",
        f"  share-limit {_share_limit(settings.share_limit)}",
        f"  check-mutation {settings.check_mutation}",
    ]
    return "\n".join(lines)


def _share_limit(limit: float | int) -> str:
    # a fraction of /dev/shm's size, or bytes (see Settings)
    from dask.utils import format_bytes

    return f"{limit:.0%} of /dev/shm" if isinstance(limit, float) else f"{format_bytes(limit)} ({limit})"


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-v", "--verbose", count=True, help="Show dedupgraph's log: -v INFO, -vv DEBUG (every object left inline).")
@click.option(
    "--check-mutation",
    is_flag=True,
    help="Run with the pass and its mutation check on instead of a dry run, and name the functions "
    "that change a hoisted object they receive (options go before SCRIPT).",
)
@click.argument("script", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def inspect(verbose: int, check_mutation: bool, script: Path, args: tuple[str, ...]) -> None:
    """Run SCRIPT (with ARGS) in dry-run mode and report each graph it computes.

    Results are those of the script without dedupgraph; the exit status is the script's.
    With --check-mutation the pass is on, and each function that changed a hoisted
    object it received is named, with the fix.
    """
    from dedupgraph.tools.script import check_script, inspect_script

    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        logger = logging.getLogger("dedupgraph")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if check_mutation:
        computed, changed, status = check_script(script, args)
    else:
        (computed, status), changed = inspect_script(script, args), []
    sys.stdout.flush()
    how = "check-mutation: the pass on" if check_mutation else "dry run: nothing changed"
    if not computed:
        click.echo(f"\ndedupgraph inspect: {script.name} computed no dask collections.")
    else:
        n = len(computed)
        click.echo(f"\ndedupgraph inspect: {script.name} computed {n} graph{'' if n == 1 else 's'} ({how})")
    for index, c in enumerate(computed, 1):
        click.echo(f"\ngraph {index} of {len(computed)}, computed at {c.where}\n{c.report}")
    if check_mutation:
        click.echo(f"\n{mutation_text(changed)}")
    sys.exit(status)


def mutation_text(changed: list[Mutation]) -> str:
    """What ``inspect --check-mutation`` says of the functions that changed a hoisted object.

    >>> print(mutation_text([]))
    mutation check: no function changed a hoisted object it received (in this host's processes).
    """
    if not changed:
        return "mutation check: no function changed a hoisted object it received (in this host's processes)."
    n = len(changed)
    lines = [f"mutation check: {n} function{'' if n == 1 else 's'} changed a hoisted object it received:"]
    lines += [f"  {m.message()}" for m in changed]
    return "\n".join(lines)


@cli.command()
@click.option("--quick", is_flag=True, help="Small sizes: under two minutes.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True, help="Folder for the table, CSVs and plots.")
@click.option("--modes", multiple=True, type=click.Choice(["plain", "dedup-config", "scheduler", "deduplicate", "deduplicate-broadcast", "scatter-broadcast", "delayed-create"]), help="Only these (repeatable).")
@click.option("--collections", multiple=True, type=click.Choice(["array", "delayed", "bag", "dataframe", "array-expr"]), help="Only these (repeatable).")
@click.option("--sizes", multiple=True, type=click.Choice(["tiny", "8KB", "16KB", "32KB", "60KB", "250KB", "2MB"]), help="Only these object sizes (repeatable); tiny: the floor, a chunk with nothing large.")
@click.option("--chunks", multiple=True, type=click.IntRange(min=1), help="Chunk counts instead of the plan's (repeatable).")
@click.option("--no-overhead", is_flag=True, help="Skip the second part, the pass's time against dask's optimize.")
@click.option("--no-host-memory", is_flag=True, help='Skip the part on one copy per host (share="host").')
@click.option("--no-repeat", is_flag=True, help="Skip the last part, one object in computation after computation.")
def bench(
    quick: bool,
    output: Path,
    modes: tuple[str, ...],
    collections: tuple[str, ...],
    sizes: tuple[str, ...],
    chunks: tuple[int, ...],
    no_overhead: bool,
    no_host_memory: bool,
    no_repeat: bool,
) -> None:
    """Compare plain dask, dedupgraph and the manual fixes: memory, time and payload, with plots."""
    import dataclasses

    from dedupgraph.benchmarks import suite

    plan = suite.QUICK if quick else suite.FULL
    overrides = {"modes": modes, "collections": collections, "sizes": sizes, "chunks": tuple(sorted(set(chunks)))}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v})
    if no_overhead:
        plan = dataclasses.replace(plan, overhead_tasks=())
    if no_host_memory:
        plan = dataclasses.replace(plan, host_memory=None)
    if no_repeat:
        plan = dataclasses.replace(plan, repeat=None)
    if len(plan.chunks) < 2:
        raise click.BadParameter("give at least two chunk counts: growth per chunk is measured between them", param_hint="--chunks")
    report = suite.run(plan, output, lambda line: click.echo(line, err=True))
    click.echo(report.read_text())
    click.echo(f"written to {output}/")


@cli.command()
@click.option("--clean", is_flag=True, help="Remove the segments that no live process maps (left by processes that died).")
def segments(clean: bool) -> None:
    """This user's shared-memory segments (share="host") on this host: size, age, in use.

    The directory is /dev/shm, or DEDUPGRAPH_SHM_DIR if set.
    """
    from dask.utils import format_bytes

    import dedupgraph.placement.segments as shared_memory
    from dedupgraph.tools import segments as listing

    directory = shared_memory.segment_dir()
    if directory is None:
        where = os.environ.get(shared_memory.DIR_VARIABLE) or shared_memory.DEFAULT_DIR
        click.echo(f"no shared memory to list here: {where} is not a usable directory on {sys.platform}")
        return
    if clean:
        removed = listing.clean(directory)
        click.echo(
            f"removed {len(removed)} segment{'' if len(removed) == 1 else 's'} that no live process mapped"
            f" ({format_bytes(sum(s.nbytes for s in removed))})" + "".join(f"\n  {s.name}" for s in removed)
        )
    click.echo(listing.table(listing.segments(directory), directory))


def main() -> None:
    """The ``dedupgraph`` console script."""
    cli()
