"""Switch the pass on and off for arrays, delayed and bags.

>>> import dedupgraph
>>> with dedupgraph.enable(min_bytes="128 KiB"):
...     pass  # computations here are deduplicated
>>> dedupgraph.enable()     # doctest: +SKIP
>>> dedupgraph.disable()    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import dask.config

from dedupgraph.core.optimizers import is_dask_optimizer
from dedupgraph.routes.config import Deduplicator, dedup, dedup_bag, dedup_delayed, without_pass
from dedupgraph.settings import Settings

OPTIMIZER_KEYS = {
    "array_optimize": dedup,
    "delayed_optimize": dedup_delayed,
    "bag_optimize": dedup_bag,
}
# The preload modules, by the names the docs give them, and the config keys that list preloads
SCHEDULER_PRELOAD = "dedupgraph.scheduler"  #: the scheduler route (dedupgraph.routes.distributed.plugin)
CLIENT_PRELOAD = "dedupgraph.preload"  #: the client side (dedupgraph.routes.distributed.client)
SCHEDULER_PRELOADS_KEY = "distributed.scheduler.preload"
CLIENT_PRELOADS_KEY = "distributed.client.preload"


def enable(**settings: Any) -> ConfigChange:
    """Deduplicate every array, delayed and bag computation; returns a :class:`ConfigChange`.

    >>> with enable(min_count=3):
    ...     dask.config.get("dedupgraph.min-count")
    3

    Called plainly, the change stays; used as a context manager, the previous
    configuration comes back on exit (only the keys written here: whatever
    else appeared meanwhile, such as distributed's defaults when it is
    imported inside the block, stays).  ``settings`` (``min_bytes``,
    ``min_count``) are validated now and written to ``dask.config``, so on
    distributed they travel with the graph to the scheduler.  A
    ``LocalCluster`` started afterwards in this process runs the scheduler
    route too (``dedupgraph.scheduler`` becomes a scheduler preload), which
    covers DataFrames and array-expr arrays, and a ``Client`` created
    afterwards runs the client side (``dedupgraph.preload``: it checks the
    cluster, and leaves out of later graphs the objects the scheduler keeps).

    The configuration is the process's, as every ``dask.config.set``: switch
    the pass on once, before starting threads that compute, not in each of
    them.  Blocks that overlap in several threads do not nest (the first to
    exit switches the pass off under the others); a thread that wants the pass
    for its own collections alone calls :func:`dedupgraph.deduplicate`.
    """
    return _switched_on(OPTIMIZER_KEYS, settings)


def switch_on() -> ConfigChange:
    """``enable()`` as the environment route and the client preload do it, at start-up and at each new Client.

    >>> def mine(dsk, keys, **kwargs):
    ...     return dsk
    >>> with dask.config.set(array_optimize=mine), switch_on():
    ...     dask.config.get("array_optimize") is mine, dask.config.get("delayed_optimize") is dedup_delayed
    (True, True)

    Nobody asked these for the pass by name, so an optimizer that is neither
    dask's nor dedupgraph's (the user's own, or a library's) stays as it is:
    the pass is off for that collection.  Keys that hold nothing, dask's
    optimizer, or dedupgraph's (after ``disable()``) get the pass.
    """
    keys = {
        key: value for key, value in OPTIMIZER_KEYS.items()
        if is_dask_optimizer(without_pass(dask.config.get(key, None)))
    }
    return _switched_on(keys, {})


def _switched_on(optimizers: Mapping[str, Deduplicator], settings: Mapping[str, Any]) -> ConfigChange:
    chosen = Settings.from_config(**settings)
    written = {f"dedupgraph.{name.replace('_', '-')}" for name in settings}
    config = {k: v for k, v in chosen.as_config().items() if k in written}
    preloads = with_preload(dask.config.get(SCHEDULER_PRELOADS_KEY, None), SCHEDULER_PRELOAD)
    clients = with_preload(dask.config.get(CLIENT_PRELOADS_KEY, None), CLIENT_PRELOAD)
    quiet_preload_lines()
    return ConfigChange({**optimizers, **config, SCHEDULER_PRELOADS_KEY: preloads, CLIENT_PRELOADS_KEY: clients})


def disable() -> ConfigChange:
    """Put back the optimizer each dedupgraph pass wraps; returns a :class:`ConfigChange`.

    >>> with enable(), disable():
    ...     dask.config.get("array_optimize").__name__
    'array_optimize'

    The key is set to the wrapped base rather than to ``None``: for arrays and
    bags a falsy value means "do not optimize at all".  Schedulers started
    afterwards in this process no longer get the scheduler route, nor new
    Clients the client side (running ones keep them).  As a context manager, the keys it changed come back on exit.
    """
    restored: dict[str, Any] = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, default=None)
        if isinstance(current, Deduplicator):
            restored[key] = current.base
    for key, ours in ((SCHEDULER_PRELOADS_KEY, SCHEDULER_PRELOAD), (CLIENT_PRELOADS_KEY, CLIENT_PRELOAD)):
        preloads = preload_list(dask.config.get(key, None))
        if ours in preloads:
            restored[key] = [p for p in preloads if p != ours]
    return ConfigChange(restored)


_MISSING = object()


class ConfigChange:
    """``dask.config`` values set now; as a context manager, on exit, only those keys put back.

    >>> with ConfigChange({"example.leaf": 1}):
    ...     dask.config.config["example"]["other"] = 2   # someone else fills the tree meanwhile
    >>> dask.config.get("example")
    {'other': 2}
    >>> del dask.config.config["example"]

    Like ``dask.config.set``, the values apply at once, so a plain call
    changes the configuration for good.  Unlike it, leaving the block never
    removes what this change did not write: ``dask.config.set`` deletes, on
    exit, a whole top-level tree that did not exist when it was entered
    (``distributed``, when dedupgraph writes a preload before distributed is
    imported), even once someone else has filled it.  Here a key that
    existed gets its previous value back; a key that did not is removed,
    or set to its default if defaults for it were registered meanwhile
    (distributed's, on its import), and the dicts created for it go only if
    they are empty again.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.config = dask.config.config
        # (path, previous value or _MISSING, whether a default existed, how many parents existed)
        self._undo: list[tuple[tuple[str, ...], Any, bool, int]] = []
        with dask.config.config_lock:
            for key, value in values.items():
                self._assign(key.split("."), value)

    def _assign(self, keys: list[str], value: Any) -> None:
        d, path, existing = self.config, [], len(keys) - 1
        for depth, part in enumerate(keys[:-1]):
            name = dask.config.canonical_name(part, d)
            if name in d and not isinstance(d[name], dict):
                # a value where a section goes: it comes back on exit, as any value replaced here
                self._undo.append(((*path, name), d[name], _default([*path, name]) is not _MISSING, depth))
                d[name] = {}
            elif name not in d:
                existing = min(existing, depth)
                d[name] = {}
            path.append(name)
            d = d[name]
        leaf = dask.config.canonical_name(keys[-1], d)
        path.append(leaf)
        previous = d.get(leaf, _MISSING)
        self._undo.append((tuple(path), previous, _default(path) is not _MISSING, existing))
        d[leaf] = value

    def __enter__(self) -> dict[str, Any]:
        return self.config

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with dask.config.config_lock:
            for path, previous, had_default, existing in reversed(self._undo):
                self._put_back(path, previous, had_default, existing)

    def _put_back(self, path: tuple[str, ...], previous: Any, had_default: bool, existing: int) -> None:
        parents = [self.config]
        for name in path[:-1]:
            child = parents[-1].get(name)
            if not isinstance(child, dict):
                if previous is _MISSING:
                    return  # gone already: nothing of ours left to remove
                child = parents[-1][name] = {}
            parents.append(child)
        if previous is not _MISSING:
            parents[-1][path[-1]] = previous
            return
        default = _default(path)
        if default is not _MISSING and not had_default:
            # registered while the block ran (an import of distributed): the default is what stays
            parents[-1][path[-1]] = copy.deepcopy(default)
            return
        parents[-1].pop(path[-1], None)
        # the dicts made for this key, deepest first, once nothing else lives in them
        for depth in range(len(path) - 2, existing - 1, -1):
            if parents[depth + 1]:
                break
            parents[depth].pop(path[depth], None)


def _default(path: list[str] | tuple[str, ...]) -> Any:
    """The value registered defaults give ``path`` (the last registration wins), or ``_MISSING``."""
    for layer in reversed(dask.config.defaults):
        d: Any = layer
        for part in path:
            if not isinstance(d, Mapping):
                break
            name = dask.config.canonical_name(part, d)  # type: ignore[arg-type]
            if name not in d:
                break
            d = d[name]
        else:
            return d
    return _MISSING


PRELOADING_LOGGER = "distributed.preloading"


class QuietPreloads(logging.Filter):
    """Drops distributed's INFO lines about loading dedupgraph's own preloads, and no other line.

    >>> record = logging.makeLogRecord({"msg": "Run preload setup: %s", "args": ("dedupgraph.preload",), "levelno": logging.INFO})
    >>> QuietPreloads().filter(record)
    False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True  # failures of our preloads are for everyone to see
        args = record.args
        name = args[0] if isinstance(args, tuple) and args else None
        return not (isinstance(name, str) and name.split(".", 1)[0] == "dedupgraph")


def quiet_preload_lines() -> None:
    """Keep distributed from logging three INFO lines per preload of ours at every Client and scheduler.

    >>> quiet_preload_lines()
    >>> [type(f).__name__ for f in logging.getLogger("distributed.preloading").filters]
    ['QuietPreloads']

    With the environment route every new ``Client`` loads ``dedupgraph.preload``
    and every scheduler started here ``dedupgraph.scheduler``; distributed
    says so at INFO ("Creating preload", "Import preload module", "Run
    preload setup").  A filter on its ``distributed.preloading`` logger drops
    those lines only; its level and handlers stay as they are (idempotent).
    """
    logger = logging.getLogger(PRELOADING_LOGGER)
    if not any(isinstance(f, QuietPreloads) for f in logger.filters):
        logger.addFilter(QuietPreloads())


def preload_list(value: Any) -> list[str]:
    """A preload config value (None, one name, or a list) as a list.

    >>> preload_list(None), preload_list("a"), preload_list(("a", "b"))
    ([], ['a'], ['a', 'b'])
    """
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def with_preload(value: Any, name: str) -> list[str]:
    """The preload list ``value`` with ``name`` in it (at the end, if it was missing).

    >>> with_preload(["x"], "dedupgraph.scheduler"), with_preload("dedupgraph.scheduler", "dedupgraph.scheduler")
    (['x', 'dedupgraph.scheduler'], ['dedupgraph.scheduler'])
    """
    preloads = preload_list(value)
    return preloads if name in preloads else [*preloads, name]
