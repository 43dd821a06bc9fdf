"""Run a script with the pass in dry-run mode, and report every graph it computes.

>>> computed, status = inspect_script("analysis.py", ["--input", "data.csv"])  # doctest: +SKIP
>>> print(computed[0].where, computed[0].report)  # doctest: +SKIP
>>> computed, changed, status = check_script("analysis.py")  # doctest: +SKIP
>>> print(changed[0].message())  # doctest: +SKIP

Behind ``dedupgraph inspect script.py``.  Every ``compute`` and ``persist``,
dask's (``dask.compute``, ``x.compute()``, ``x.persist()``) and a distributed
``Client``'s, passes its collections to ``collections_to_expr``; while the
script runs, a wrapper of that function reports them first, with
:func:`dedupgraph.inspect`, whatever the scheduler and the collection type.
That is the one observation point all computations share.  The wrapper is
put in place for the length of the run only, and taken out afterwards.

Behind ``dedupgraph inspect --check-mutation script.py``, :func:`check_script`
runs the script with the pass and its mutation check on instead, and names
the functions that changed a hoisted object they received: the processes of
this host report them to one file (``dedupgraph.core.runtime.REPORT_ENV``),
which the script's own process, a local ``processes`` pool and the workers of
a ``LocalCluster`` inherit.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import runpy
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dedupgraph.core.runtime import REPORT_ENV, reported
from dedupgraph.routes.activation import enable
from dedupgraph.tools.report import Report, inspect

logger = logging.getLogger("dedupgraph")

# Modules that call collections_to_expr by a name of their own, bound at import.
_CALLERS = ("dask.base", "distributed.client")


@dataclass(frozen=True)
class Computed:
    """One computation of the script: where it was asked for, and its report."""

    where: str  #: "script.py:12", the script's line that computed it
    report: Report


def inspect_script(path: str | Path, argv: Sequence[str] = ()) -> tuple[list[Computed], int]:
    """Run ``path`` as ``__main__`` with ``argv``; its computations and its exit status.

    The pass is in dry-run mode for the run, so the script's results and graphs
    are the same as without dedupgraph.  An exception in the script is printed
    and gives status 1, as ``python script.py`` would.
    """
    script = Path(path).resolve()
    computed: list[Computed] = []

    def observe(collections: Any) -> None:
        computed.append(Computed(_call_site(script), inspect(collections)))

    with enable(dry_run=True), observing(observe):
        status = _run(script, argv)
    return computed, status


@dataclass(frozen=True)
class Mutation:
    """A function that changed a hoisted object it received, and the object's type."""

    function: str  #: its qualified name, as the check's WARNING gives it
    type: str  #: the fully qualified type of what it changed
    fix: str  #: how to keep the object per task, as the WARNING says it

    def message(self) -> str:
        """One line: who changed what, and the fix.

        >>> print(Mutation("analysis.fill", "analysis.Buffer", "dedupgraph.keep_inline(obj)").message())
        analysis.fill changed a analysis.Buffer; keep it per task: dedupgraph.keep_inline(obj)
        """
        return f"{self.function} changed a {self.type}; keep it per task: {self.fix}"


def check_script(path: str | Path, argv: Sequence[str] = ()) -> tuple[list[Computed], list[Mutation], int]:
    """Run ``path`` with the pass and ``check_mutation`` on: its computations, the functions that changed a hoisted object, its exit status.

    The processes that report are those of this host that inherit this
    process's environment; a remote cluster's workers only log their WARNING.
    """
    script = Path(path).resolve()
    computed: list[Computed] = []

    def observe(collections: Any) -> None:
        computed.append(Computed(_call_site(script), inspect(collections)))

    with tempfile.TemporaryDirectory(prefix="dedupgraph-check-") as folder:
        report = Path(folder) / "mutations.jsonl"
        with _environment(REPORT_ENV, str(report)), enable(check_mutation=True), observing(observe):
            status = _run(script, argv)
        changed = [Mutation(*found) for found in reported(report)]
    return computed, changed, status


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def observing(observe: Callable[[Any], None]) -> Iterator[None]:
    """Call ``observe(collections)`` before each computation while the block runs."""
    busy = threading.local()  # inspect() must not observe itself
    # every module first: one imported after a patch would bind the wrapper
    modules = [m for m in map(_imported, _CALLERS) if m is not None]
    patched: list[tuple[Any, Any]] = []
    for module in modules:
        original = getattr(module, "collections_to_expr", None)
        if original is None:
            logger.warning("%s.collections_to_expr is gone: computations through it are not reported", module.__name__)
            continue
        setattr(module, "collections_to_expr", _observed(original, observe, busy))
        patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.collections_to_expr = original


def _imported(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # distributed is optional for this
        return None


def _observed(original: Callable[..., Any], observe: Callable[[Any], None], busy: threading.local) -> Callable[..., Any]:
    def collections_to_expr(collections: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(busy, "on", False):
            busy.on = True
            try:
                observe(collections)
            except Exception as e:  # a report must never break the script
                logger.warning("could not report a graph: %s: %s", type(e).__name__, e)
            finally:
                busy.on = False
        return original(collections, *args, **kwargs)

    return collections_to_expr


def _call_site(script: Path) -> str:
    """The script's innermost line on the current stack."""
    for frame in reversed(traceback.extract_stack()):
        if Path(frame.filename).resolve() == script:
            return f"{script.name}:{frame.lineno}"
    return f"{script.name} (a thread or module it started)"


def _run(script: Path, argv: Sequence[str]) -> int:
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))  # as ``python script.py`` does
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
