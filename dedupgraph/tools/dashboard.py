"""The ``/dedupgraph`` page of a scheduler's web server: the hoisted objects held now, and the last graphs.

>>> import asyncio
>>> from distributed import Scheduler
>>> from tornado.httpclient import AsyncHTTPClient
>>> async def main():
...     async with Scheduler(dashboard_address="127.0.0.1:0", preload=["dedupgraph.scheduler"]) as s:
...         url = f"http://127.0.0.1:{s.http_server.port}/dedupgraph"
...         return (await AsyncHTTPClient().fetch(url)).body.decode()
>>> "No hoisted object is held now" in asyncio.run(main())
True

Mounted by the scheduler preload ``dedupgraph.scheduler``, which adds its
handler to the scheduler's running web application (:func:`mount`), as
distributed adds its own dashboard's.  Distributed also mounts the modules
that the config ``distributed.scheduler.http.routes`` lists, but it reads
that list in ``Scheduler.__init__``, before any preload's ``dask_setup``
runs: only an import-time change of the configuration (which importing
dedupgraph never makes), or ``enable()`` and the startup hook writing it,
would reach it, and then not for ``dask scheduler --preload
dedupgraph.scheduler``, and for schedulers without the route too.

Plain HTML, one small style sheet, no script; every value is escaped.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes
from distributed.http.utils import RequestHandler

from dedupgraph.routes.distributed.records import GraphRecord
from dedupgraph.tools.observe import HeldObject, Snapshot, snapshot

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger("dedupgraph")

PATH = "dedupgraph"  #: under the scheduler's HTTP prefix (``--dashboard-prefix``), ``/`` by default

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.n { text-align: right; white-space: nowrap; }
code { font-size: 0.95em; } .quiet { color: #777; }
"""


class DashboardPage(RequestHandler):
    """``GET /dedupgraph``: :func:`render` of the scheduler's :func:`~dedupgraph.tools.observe.snapshot`."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        try:
            page = render(snapshot(self.server))
        except Exception as e:  # the page is a nicety: say what went wrong, log it, never more
            logger.warning("dedupgraph: the /dedupgraph page failed", exc_info=True)
            self.set_status(500)
            page = f"<!DOCTYPE html><html><body><p>dedupgraph: the page failed: {_e(type(e).__name__)}: {_e(e)}</p></body></html>"
        self.write(page)


def mount(scheduler: Scheduler) -> str | None:
    """Serve the page on ``scheduler``'s web server; its path, or None where it has none."""
    application = getattr(scheduler, "http_application", None)
    if application is None:
        return None
    path = http_prefix(application) + PATH
    application.add_handlers(r".*$", [(path, DashboardPage, {"dask_server": scheduler})])
    return path


def http_prefix(application: Any) -> str:
    """The prefix distributed put before its own routes (``--dashboard-prefix``), found from its ``/health``.

    The scheduler keeps no attribute with it.
    """
    for rule in getattr(application.wildcard_router, "rules", ()):
        pattern = getattr(getattr(rule.matcher, "regex", None), "pattern", "")
        if pattern.endswith("/health$"):
            return pattern[: -len("health$")]
    return "/"


def render(now: Snapshot) -> str:
    """The page for ``now``, every value escaped.

    >>> from dedupgraph.routes.distributed.records import Totals
    >>> page = render(Snapshot(False, "<off>", (), Totals(), ()))
    >>> "&lt;off&gt;" in page and "<off>" not in page
    True
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dedupgraph</title>",
        f"<style>{_STYLE}</style></head><body><h1>dedupgraph</h1>",
    ]
    if now.route:
        parts.append("<p>The scheduler route is on: every graph this scheduler receives is deduplicated.</p>")
    else:
        parts.append(f"<p>The scheduler route is off: {_e(now.problem or 'not switched on')}.</p>")
    parts.append(_held_table(now.held))
    if now.route:
        kept = f"{len(now.kept)}, {format_bytes(now.kept_bytes)}" if now.kept else "none"
        parts.append(f"<p>Kept for later computations (reuse-limit): {_e(kept)}.</p>")
    parts.append(_totals(now))
    parts.append(_graphs_table(now.graphs))
    parts.append("</body></html>")
    return "".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _held_table(held: tuple[HeldObject, ...]) -> str:
    if not held:
        return "<h2>Hoisted objects held now</h2><p class='quiet'>No hoisted object is held now.</p>"
    total = sum(h.nbytes for h in held)
    saved = sum(h.saved_bytes for h in held)
    rows = [
        f"<h2>Hoisted objects held now: {len(held)}, {_e(format_bytes(total))}; "
        f"{_e(format_bytes(saved))} of task payload saved</h2>",
        "<table><tr><th>type</th><th>size</th><th>tasks using it</th><th>bytes saved</th>"
        "<th>workers holding it</th><th>digest</th><th>key</th></tr>",
    ]
    for h in held:
        size = format_bytes(h.nbytes) + ("" if h.recorded else " (workers' estimate)")
        where = " (one copy per host)" if h.per_host else ""
        rows.append(
            f"<tr><td>{_e(h.label)}</td><td class='n'>{_e(size)}</td><td class='n'>{h.tasks}</td>"
            f"<td class='n'>{_e(format_bytes(h.saved_bytes))}</td>"
            f"<td>{'<br>'.join(_e(w) for w in h.workers)}{_e(where)}</td>"
            f"<td><code>{_e(h.digest)}</code></td><td><code>{_e(h.key)}</code></td></tr>"
        )
    rows.append("</table>")
    shared = [h for h in held if h.per_host]
    if shared:
        hosts = {host for h in shared for host in h.hosts}
        in_all = sum(h.nbytes * len(h.hosts) for h in shared)
        rows.append(
            f"<p>In shared memory (share=\"host\"): {len(shared)} of them, {_e(format_bytes(in_all))} on "
            f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}, one copy per host. The workers' process memory, "
            "by which distributed pauses, spills and restarts them, leaves it out.</p>"
        )
    return "".join(rows)


def _totals(now: Snapshot) -> str:
    t = now.totals
    hoisted = ", ".join(f"{label} {count}" for label, count in sorted(t.objects_hoisted.items())) or "none"
    fallbacks = ", ".join(f"{cause} {count}" for cause, count in sorted(t.fallbacks.items())) or "none"
    failures = ", ".join(f"{cause} {count}" for cause, count in sorted(t.failures.items())) or "none"
    items = [
        ("graphs received", t.graphs_seen),
        ("graphs deduplicated", t.graphs_deduplicated),
        ("objects hoisted", hoisted),
        ("task payload removed from graphs", format_bytes(t.bytes_removed)),
        ("fallbacks to the pass", fallbacks),
        ("failures (graphs left as plain dask's)", failures),
        ("route CPU time", f"{t.cpu_seconds:.3f} s"),
    ]
    rows = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in items)
    return f"<h2>Since the route was switched on</h2><table>{rows}</table>"


def _graphs_table(graphs: tuple[GraphRecord, ...]) -> str:
    if not graphs:
        return "<h2>Last graphs</h2><p class='quiet'>No graph received yet.</p>"
    rows = [
        "<h2>Last graphs, the latest first</h2>",
        "<table><tr><th>graph</th><th>outcome</th><th>tasks</th><th>hoisted</th>"
        "<th>payload removed</th><th>fallbacks</th><th>route CPU time</th></tr>",
    ]
    for g in reversed(graphs):
        outcome = g.outcome + (f": {g.cause}" if g.cause else "")
        hoisted = "<br>".join(
            f"{_e(h.label)}, {_e(format_bytes(h.nbytes))}, carried by {h.tasks} tasks (<code>{_e(h.key)}</code>)"
            for h in g.hoisted
        )
        rows.append(
            f"<tr><td class='n'>{g.number}</td><td>{_e(outcome)}</td><td class='n'>{g.tasks}</td>"
            f"<td>{hoisted}</td><td class='n'>{_e(format_bytes(g.bytes_removed))}</td>"
            f"<td>{_e(', '.join(g.fallbacks))}</td><td class='n'>{g.cpu_seconds * 1000:.1f} ms</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
