"""Helpers that rewritten tasks call on the workers.

>>> call(max, 1, 2)
2
>>> table = [1, 2, 3]
>>> call_guarded(received("builtins.len", (table,), ()), len, table)
3

A task whose own function was hoisted calls it through :func:`call`.  With
``check-mutation`` on, or where the task receives an object that
``share="host"`` keeps in shared memory, the rewrite makes a carrying task
``call_guarded(received(name, watched, shared), func, *args, **kwargs)``:
dask evaluates the arguments of a task in order, so :func:`received` digests
the watched objects before any nested task of the original arguments can
touch them, and :func:`call_guarded` runs the task's function, then digests
them again.  A change is logged as one WARNING per function and process;
a write into a read-only shared buffer raises :class:`SharedReadOnlyError`.

This module's names are part of the graphs dedupgraph writes: keep them
importable and stable, since clients, schedulers and workers must agree.
"""

from __future__ import annotations

import json
import logging
import os
import types
from collections.abc import Callable
from typing import Any

import xxhash

from dedupgraph.core.fingerprint import pickled_parts
from dedupgraph.once import Once

logger = logging.getLogger("dedupgraph")

#: An environment variable naming a file to which every process appends one JSON
#: line per function the mutation check caught (``dedupgraph inspect --check-mutation``
#: sets it, so that worker processes and local process pools report to it too).
REPORT_ENV = "DEDUPGRAPH_MUTATION_REPORT"

# (report file, function name) -> whether its change was reported in this process: one
# per function that changed an object (and per run of a tool that names a new file)
_reported: dict[tuple[str | None, str], Once] = {}


def call(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a hoisted function: tasks whose function was hoisted become ``call(ref, *args)``."""
    return func(*args, **kwargs)


class SharedReadOnlyError(ValueError):
    """A task wrote into a buffer that ``share="host"`` maps read-only: a ``ValueError``, as numpy's own."""


class Received:
    """What a guarded task received: the objects to check with their digests, and the host-shared ones.

    >>> Received("mod.f", (), (), ()).changed()
    []
    """

    __slots__ = ("name", "watched", "digests", "shared")

    def __init__(self, name: str, watched: tuple[Any, ...], digests: tuple[int | None, ...], shared: tuple[Any, ...]) -> None:
        self.name = name  #: the function (or the functions of a fused task) that receives the objects
        self.watched = watched
        self.digests = digests
        self.shared = shared

    def changed(self) -> list[Any]:
        """The watched objects whose digest differs now from the one taken before the call."""
        return [obj for obj, before in zip(self.watched, self.digests) if before is not None and digest(obj) != before]


def received(name: str, watched: tuple[Any, ...], shared: tuple[Any, ...]) -> Received:
    """A guarded task's first argument, evaluated before its others: ``watched`` digested as they are now."""
    return Received(name, watched, tuple(digest(obj) for obj in watched), shared)


def call_guarded(receipt: Received, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)``, then a WARNING if it changed a watched object; read-only writes explained."""
    try:
        result = func(*args, **kwargs)
    except ValueError as e:
        if receipt.shared and "read-only" in str(e) and not isinstance(e, SharedReadOnlyError):
            raise SharedReadOnlyError(read_only_message(receipt, e)) from e
        raise
    if receipt.watched:
        for obj in receipt.changed():
            report_mutation(receipt.name, obj)
    return result


def digest(obj: Any) -> int | None:
    """A cheap digest of ``obj``'s content: xxh3-64 of its pickle, large buffers hashed in place; None if it does not pickle.

    >>> digest([1, 2]) == digest([1, 2]), digest([1, 2]) == digest([2, 1])
    (True, False)

    Compared only within one process, on one object: pickles that differ
    between processes (the order of a set of strings) cannot matter.
    """
    try:
        parts = pickled_parts(obj)
    except Exception:  # it pickled when it was hoisted; if not now, there is nothing to compare
        return None
    hasher = xxhash.xxh3_64(parts[0])
    for part in parts[1:]:
        hasher.update(part)
    return hasher.intdigest()


def type_name(obj: Any) -> str:
    """The fully qualified name of ``obj``'s type; for a bound method, its instance's (what a call changes).

    >>> type_name([1]), type_name(Received("f", (), (), ()).changed)
    ('builtins.list', 'dedupgraph.core.runtime.Received')
    """
    if isinstance(obj, types.MethodType):
        obj = obj.__self__
    typ = type(obj)
    return f"{typ.__module__}.{typ.__qualname__}"


def fix_for(obj: Any) -> str:
    """How to keep ``obj`` per task: the advice of the check's WARNING and of the read-only error.

    >>> print(fix_for([1]))
    dedupgraph.keep_inline(obj) for this object, or dedupgraph.enable(exclude=['builtins.list']) for its type
    >>> print(fix_for(Received("f", (), (), ()).changed))
    dedupgraph.enable(exclude=['builtins.method']) for every bound method (neither keep_inline nor excluding dedupgraph.core.runtime.Received reaches a method of one)
    """
    if isinstance(obj, types.MethodType):
        return (
            "dedupgraph.enable(exclude=['builtins.method']) for every bound method (neither keep_inline nor "
            f"excluding {type_name(obj)} reaches a method of one)"
        )
    return f"dedupgraph.keep_inline(obj) for this object, or dedupgraph.enable(exclude=[{type_name(obj)!r}]) for its type"


def report_mutation(name: str, obj: Any) -> None:
    """Log that ``name`` changed ``obj``, once per function in this process, and append it to the report file."""
    path = os.environ.get(REPORT_ENV)
    if not _reported.setdefault((path, name), Once())():  # setdefault is atomic: one Once per name
        return
    kind, fix = type_name(obj), fix_for(obj)
    logger.warning(
        "dedupgraph check-mutation: %s changed the %s it received through a hoisted key; every task of this "
        "process that needs the object receives the same one, so other tasks may see the change. Keep it "
        "per task: %s",
        name,
        kind,
        fix,
    )
    if path:
        try:
            with open(path, "a") as f:  # one short line per write: appends from several processes stay whole
                f.write(json.dumps({"function": name, "type": kind, "fix": fix, "pid": os.getpid()}) + "\n")
        except OSError as e:  # the report is a tool's; the task's result must not depend on it
            logger.debug("dedupgraph: could not append to %s=%s: %s", REPORT_ENV, path, e)


def reported(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """(function, type, fix) of each change appended to the report file ``path``, once each, in order."""
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:  # nothing changed anything
        return []
    return list(dict.fromkeys((line["function"], line["type"], line["fix"]) for line in lines))


def read_only_message(receipt: Received, error: ValueError) -> str:
    """Why a write into a host-shared object failed, and the ways out."""
    kinds = ", ".join(sorted({type_name(obj) for obj in receipt.shared})) or "object"
    fix = fix_for(receipt.shared[0]) if receipt.shared else "dedupgraph.keep_inline(obj)"
    return (
        f"{error} (dedupgraph: {receipt.name} wrote into a buffer of a {kinds} that dedupgraph shares "
        "between the worker processes of this host, read-only, because share=\"host\"; copy it before "
        f"writing (arr.copy()), keep it per task: {fix}, or use share=\"process\")"
    )
