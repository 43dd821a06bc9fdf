"""A pytest plugin: run a whole test suite with the dedupgraph pass forced on.

Usage::

    pytest -p dedupgraph.testing                               # your settings (dask config, DASK_DEDUPGRAPH__*)
    pytest -p dedupgraph.testing --dedupgraph-min-bytes=1 --dedupgraph-min-count=2
    pytest -p dedupgraph.testing --dedupgraph-strict           # a pass that fails fails the test
    pytest -p dedupgraph.testing --dedupgraph-stats=stats.json # the counts below, as JSON

or permanently, in ``pyproject.toml``: ``addopts = "-p dedupgraph.testing"``
(``-p no:dedupgraph.testing`` then switches it off for one run).  A low
``--dedupgraph-min-bytes`` (1) makes the pass hoist in nearly every graph:
the functions and partials that dask repeats in every task become shared
keys too, which exercises the rewrite far more than production settings do.

While the plugin is loaded, every test runs with what ``dedupgraph.enable()``
sets in dask's config (the pass in ``array_optimize``, ``delayed_optimize``
and ``bag_optimize``, the scheduler route's preload, the settings given),
however the test treats dask's config:

- the pass is set when pytest starts (for code that computes at import or
  collection) and again by an autouse fixture before each test, so a test
  that leaves the config changed does not switch it off for the next one;
- ``distributed.utils_test.reset_config`` (run by ``gen_cluster``,
  ``gen_test``, and the ``loop`` and ``client`` fixtures) puts back the
  config of the moment that module was imported: the plugin adds the pass
  and its settings to that snapshot, so clusters in tests get it too.

The terminal summary proves it ran: in how many tests the pass optimized a
graph, how many graphs it optimized, in how many it hoisted objects (the
graphs that the scheduler route of an in-process scheduler deduplicated are
also counted apart), every WARNING of the ``dedupgraph`` logger, failures of
the pass first (the pass logs and swallows its own exceptions, so a suite
would never see them otherwise; ``--dedupgraph-strict`` fails the test), and
any local computation that ran while the pass was off.  A graph counts as hoisted when the pass's output
holds ``dedup-...`` keys.  Not for ``pytest-xdist``: each worker would count
on its own.

>>> Stats().summary_lines()[0]
'pass on in 0 tests; it optimized 0 graphs in 0 tests and hoisted 0 objects in 0 graphs'
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.config
import pytest
from dask.callbacks import Callback

from dedupgraph.routes.activation import OPTIMIZER_KEYS, enable
from dedupgraph.routes.config import Deduplicator
from dedupgraph.settings import Settings

# The keys of hoisted contents start with this (dedupgraph.core.plan.hoisted_key).
HOISTED_PREFIX = "dedup-"

_OUTSIDE_TESTS = "<outside tests>"


@dataclass
class Stats:
    """What the pass did during one pytest run; thread-safe (schedulers run the pass in threads)."""

    tests: int = 0  #: tests that ran with the plugin's fixture
    graphs: int = 0  #: graphs the pass optimized
    hoisted_graphs: int = 0  #: graphs whose output holds hoisted keys
    hoisted_keys: int = 0  #: hoisted keys over all those graphs
    route_graphs: int = 0  #: graphs the scheduler route of an in-process scheduler deduplicated
    route_hoisted_graphs: int = 0  #: of those, graphs whose output holds hoisted keys
    tests_with_graphs: set[str] = field(default_factory=set)
    tests_with_hoists: set[str] = field(default_factory=set)
    #: (test, message) for every WARNING or worse the dedupgraph logger emitted
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: tests in which a local scheduler ran a graph while the pass was off
    off: dict[str, int] = field(default_factory=dict)
    current: str = _OUTSIDE_TESTS
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_graph(self, nhoisted: int, route: bool = False) -> None:
        with self.lock:
            self.graphs += 1
            self.tests_with_graphs.add(self.current)
            if route:
                self.route_graphs += 1
                self.route_hoisted_graphs += bool(nhoisted)
            if nhoisted:
                self.hoisted_graphs += 1
                self.hoisted_keys += nhoisted
                self.tests_with_hoists.add(self.current)

    def record_failure(self, message: str) -> None:
        with self.lock:
            self.failures.append((self.current, message))

    def record_off(self) -> None:
        with self.lock:
            self.off[self.current] = self.off.get(self.current, 0) + 1

    def summary_lines(self) -> list[str]:
        """The terminal summary (without the settings line)."""
        lines = [
            f"pass on in {self.tests} tests; it optimized {self.graphs} graphs in "
            f"{len(self.tests_with_graphs)} tests and hoisted {self.hoisted_keys} objects "
            f"in {self.hoisted_graphs} graphs"
        ]
        if self.route_graphs:
            lines.append(
                f"of these, the scheduler route deduplicated {self.route_graphs} graphs "
                f"and hoisted in {self.route_hoisted_graphs}"
            )
        if self.failures:
            lines.append(f"the pass failed {len(self.failures)} times (graphs left unchanged):")
            lines += [f"  {test}: {message}" for test, message in self.failures[:20]]
            if len(self.failures) > 20:
                lines.append(f"  ... and {len(self.failures) - 20} more")
        if self.off:
            lines.append(
                f"{sum(self.off.values())} local computations ran with the pass off, in {len(self.off)} tests:"
            )
            lines += [f"  {test}" for test in sorted(self.off)[:20]]
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "tests": self.tests,
            "graphs": self.graphs,
            "hoisted_graphs": self.hoisted_graphs,
            "hoisted_keys": self.hoisted_keys,
            "route_graphs": self.route_graphs,
            "route_hoisted_graphs": self.route_hoisted_graphs,
            "tests_with_graphs": len(self.tests_with_graphs),
            "tests_with_hoists": len(self.tests_with_hoists),
            "failures": [{"test": t, "message": m} for t, m in self.failures],
            "off": self.off,
        }


STATS = Stats()


def hoisted_keys(graph: Mapping[Hashable, Any]) -> int:
    """How many keys of ``graph`` hold hoisted contents.

    >>> hoisted_keys({"x": 1, "dedup-list-00ff": [1]})
    1
    """
    try:
        return sum(1 for key in graph if isinstance(key, str) and key.startswith(HOISTED_PREFIX))
    except Exception:  # counting must never fail a computation
        return 0


class CountingDeduplicator(Deduplicator):
    """The pass, counting the graphs it optimizes and those it hoists in (into :data:`STATS`).

    It reads its settings from ``dask.config`` like the passes of
    ``dedupgraph.enable()``.  Pickled for a distributed scheduler it carries
    the settings in force, like them; unpickled in this process (in-process
    schedulers of ``gen_cluster`` and ``LocalCluster``) it keeps counting.
    """

    def __call__(self, dsk: Mapping[Hashable, Any], keys: Any, **kwargs: Any) -> Mapping[Hashable, Any]:
        out = super().__call__(dsk, keys, **kwargs)
        STATS.record_graph(hoisted_keys(out))
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (CountingDeduplicator.with_settings, (self.base, self.effective_settings()))

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingDeduplicator:
        # distributed.utils_test.reset_config deep-copies its config snapshot:
        # keep reading the settings from dask.config, as before the reset
        return self


def passes() -> dict[str, CountingDeduplicator]:
    """A counting pass over the same base optimizer for each of ``dedupgraph.enable()``'s keys."""
    return {key: CountingDeduplicator(base=opt.base) for key, opt in OPTIMIZER_KEYS.items()}


def count_route() -> Callable[[], None] | None:
    """Count the graphs the scheduler route deduplicates (``dedupgraph.routes.distributed.submissions.Route.deduplicated``).

    Where a scheduler runs the route, it takes the passes out of the graphs
    it receives and deduplicates each whole graph itself.  Returns the undo,
    or None where this dedupgraph has no such route.
    """
    try:
        from dedupgraph.routes.distributed.submissions import Route
    except ImportError:
        return None
    original = Route.__dict__.get("deduplicated")
    if not callable(original):
        return None

    @functools.wraps(original)
    def deduplicated(self: Any, dsk: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, dsk, *args, **kwargs)
        STATS.record_graph(hoisted_keys(out) if out is not dsk else 0, route=True)
        return out

    Route.deduplicated = deduplicated  # type: ignore[method-assign]
    return lambda: setattr(Route, "deduplicated", original)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested dask config.

    >>> flat_config({"a": {"b": 1, "c": {}}, "d": [2]})
    {'a.b': 1, 'a.c': {}, 'd': [2]}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def pass_is_on() -> bool:
    """Whether all three config keys hold a dedupgraph pass."""
    return all(isinstance(dask.config.get(key, None), Deduplicator) for key in OPTIMIZER_KEYS)


class _FailureLog(logging.Handler):
    """Records what the ``dedupgraph`` logger reports at WARNING or worse (a failed pass above all)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f": {type(exc).__name__}: {exc}"
            STATS.record_failure(message)
        except Exception:
            self.handleError(record)


class _OffWatch(Callback):
    """Sees each graph a local scheduler runs: counts those run while the pass is off."""

    def _start(self, dsk: Any) -> None:
        if not pass_is_on():
            STATS.record_off()


class _Plugin:
    """The state of one pytest run: the config it set, and what to undo at the end."""

    def __init__(self, config: pytest.Config) -> None:
        overrides = {}
        for name in ("min_bytes", "min_count"):
            value = config.getoption(f"dedupgraph_{name}")
            if value is not None:
                overrides[name] = value
        before = flat_config(dask.config.config)
        try:
            self._session = enable(**overrides)  # exactly what users switch on
        except ValueError as e:
            raise pytest.UsageError(f"dedupgraph.testing: {e}") from None
        after = flat_config(dask.config.config)
        enabled = {key: value for key, value in after.items() if key not in before or not _same(before[key], value)}
        # ...with passes that count in place of enable()'s
        counting = passes()
        self.config = {**enabled, **counting}
        self._counting = dask.config.set(counting)
        self.settings = Settings.from_config()
        self.strict = bool(config.getoption("dedupgraph_strict"))
        self.stats_path = config.getoption("dedupgraph_stats")
        self._snapshot: dask.config.set | None = None
        self._uncount_route = count_route()
        self._handler = _FailureLog()
        logging.getLogger("dedupgraph").addHandler(self._handler)
        self._watch = _OffWatch()
        self._watch.register()

    def patch_cluster_snapshot(self) -> None:
        """Add the pass to ``distributed.utils_test``'s config snapshot, once it is imported."""
        if self._snapshot is not None:
            return
        utils_test = sys.modules.get("distributed.utils_test")
        if utils_test is not None and isinstance(getattr(utils_test, "original_config", None), dict):
            self._snapshot = dask.config.set(self.config, config=utils_test.original_config)

    def close(self) -> None:
        self._watch.unregister()
        logging.getLogger("dedupgraph").removeHandler(self._handler)
        if self._uncount_route is not None:
            self._uncount_route()
        if self._snapshot is not None:
            self._snapshot.__exit__(None, None, None)
        self._counting.__exit__(None, None, None)
        self._session.__exit__(None, None, None)

    def settings_line(self) -> str:
        size = "auto" if self.settings.min_bytes is None else self.settings.min_bytes
        return f"dedupgraph: pass forced on, min-bytes={size}, min-count={self.settings.min_count}" + (
            ", strict" if self.strict else ""
        )


_PLUGIN_KEY = pytest.StashKey[_Plugin]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dedupgraph", "dedupgraph pass forced on (dedupgraph.testing)")
    group.addoption(
        "--dedupgraph-min-bytes",
        default=None,
        help="min-bytes of the pass for this run: an int, a byte string ('64 KiB') or 'auto'; default: dask config",
    )
    group.addoption(
        "--dedupgraph-min-count",
        type=int,
        default=None,
        help="min-count of the pass for this run; default: dask config",
    )
    group.addoption(
        "--dedupgraph-strict",
        action="store_true",
        default=False,
        help="fail a test (at teardown) if the pass failed or logged a warning while it ran",
    )
    group.addoption(
        "--dedupgraph-stats",
        default=None,
        metavar="PATH",
        help="write the pass's counts for this run to PATH as JSON",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_PLUGIN_KEY] = _Plugin(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_PLUGIN_KEY, None)
    if plugin is not None:
        plugin.close()
        del config.stash[_PLUGIN_KEY]


def pytest_report_header(config: pytest.Config) -> str | None:
    plugin = config.stash.get(_PLUGIN_KEY, None)
    return plugin.settings_line() if plugin is not None else None


@pytest.fixture(autouse=True)
def dedupgraph_pass_on(request: pytest.FixtureRequest) -> Iterator[None]:
    """Set the pass before each test (autouse): the config may have been changed since the start."""
    plugin = request.config.stash.get(_PLUGIN_KEY, None)
    if plugin is None:  # this module imported without being the plugin (its own doctests)
        yield
        return
    plugin.patch_cluster_snapshot()
    failures_before = len(STATS.failures)
    STATS.current = request.node.nodeid
    STATS.tests += 1
    try:
        with dask.config.set(plugin.config):
            yield
    finally:
        STATS.current = _OUTSIDE_TESTS
    failed = [message for _, message in STATS.failures[failures_before:]]
    if plugin.strict and failed:
        pytest.fail("dedupgraph pass failed in this test:\n" + "\n".join(failed), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    plugin = config.stash.get(_PLUGIN_KEY, None)
    if plugin is None:
        return
    terminalreporter.write_sep("=", "dedupgraph")
    terminalreporter.write_line(plugin.settings_line())
    for line in STATS.summary_lines():
        terminalreporter.write_line(line)
    if plugin.stats_path:
        with open(plugin.stats_path, "w") as f:
            json.dump({"settings": plugin.settings_line(), **STATS.as_json()}, f, indent=1)
