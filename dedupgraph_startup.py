"""Startup hook: ``DASK_DEDUPGRAPH__ENABLED=True`` switches the pass on in any Python process.

>>> # DASK_DEDUPGRAPH__ENABLED=True python analysis.py   (no import of dedupgraph needed)

``dedupgraph_startup.pth``, installed next to this module in site-packages,
runs at interpreter start-up; only when the variable is set to something
other than a false value (``False``, ``false``, ``0``, ``no``, or empty) does
it import this module and call :func:`install`.  Otherwise nothing is
imported at all.  A true value (``True``, ``true``, ``1``, ``yes``) enables
the pass once dask is imported; any other value (``maybe``, ``on``) leaves it
off, with one ``RuntimeWarning`` at that point that names the accepted values.

This is deliberately a top-level module that imports neither dask nor
dedupgraph: importing dask costs a process a noticeable start-up time
(docs/benchmarks.rst, "Measurements behind the code"), which only a program
that imports dask itself should pay.  :func:`install`
waits for that import and then enables the pass, so ``import dask`` (or
``import dask.array``, or ``from distributed import Client``) is all that a
program needs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

# Only names the interpreter has loaded anyway: importlib.abc alone would
# pull in importlib.resources and pathlib, at every start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import importlib.machinery
    import types
    from collections.abc import Sequence
    from typing import Any

VARIABLE = "DASK_DEDUPGRAPH__ENABLED"
# Compared case-insensitively, after stripping blanks.  The .pth line tests the
# false values itself (and the empty string, unset), so as to import nothing then.
TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no")


def install() -> None:
    """Act on the variable as soon as dask is imported (at once if it already is)."""
    if "dask" in sys.modules:
        dask_imported()
    elif not any(isinstance(f, _WhenDaskImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenDaskImported())


def requested() -> bool:
    """Whether the variable holds a true value."""
    return _value() in TRUE_VALUES


def unrecognized() -> bool:
    """Whether the variable holds something that is neither true nor false (nor empty).

    >>> # DASK_DEDUPGRAPH__ENABLED=maybe: unrecognized() is True, requested() False
    """
    value = _value()
    return bool(value) and value not in TRUE_VALUES and value not in FALSE_VALUES


def _value() -> str:
    return os.environ.get(VARIABLE, "").strip().lower()


def dask_imported() -> None:
    """What the variable asks for, once dask is imported: enable the pass, or warn that its value means nothing.

    >>> # import dask   (with DASK_DEDUPGRAPH__ENABLED=True: the pass is on when it returns)
    """
    if requested():
        activate()
    elif unrecognized():
        warnings.warn(
            f"{VARIABLE}={os.environ.get(VARIABLE)!r} is neither true nor false, so dedupgraph stays off. "
            f"Accepted values, in any letter case: {', '.join(TRUE_VALUES)} (the pass on); "
            f"{', '.join(FALSE_VALUES)}, or unset (off).",
            RuntimeWarning,
            stacklevel=2,
        )


def activate() -> None:
    """Enable the pass for arrays, delayed and bags, guard every new Client, and give the route to schedulers.

    ``dedupgraph.enable()`` also makes ``dedupgraph.scheduler`` a scheduler
    preload: a ``dask scheduler`` (or a ``LocalCluster``) started in this
    process deduplicates every graph it receives, DataFrames included.

    Never raises: a broken installation must not break ``import dask``.
    Acts once per process: importing dedupgraph activates it (at the end of
    ``dedupgraph/__init__.py``), so when dask comes first this only imports
    dedupgraph.
    """
    module = sys.modules.get("dedupgraph")
    if module is not None and not hasattr(module, "enable"):
        # dedupgraph itself is importing dask (a program that imports it first):
        # half imported, it cannot be enabled yet; it calls activate() itself once it can
        return
    try:
        import dask.config

        if module is None:
            import dedupgraph  # noqa: F401  (which calls activate() again, enabled this time)

            return
        from dedupgraph.routes.activation import CLIENT_PRELOAD, CLIENT_PRELOADS_KEY, preload_list, switch_on

        switch_on()  # dedupgraph.enable(), but an optimizer of the user's own stays
        # Every new Client first checks that its scheduler and workers run
        # this dedupgraph, and switches the pass off (with one warning) if not:
        # the scheduler unpickles the pass with every graph.
        preloads = preload_list(dask.config.get(CLIENT_PRELOADS_KEY, None))
        if CLIENT_PRELOAD not in preloads:
            dask.config.set({CLIENT_PRELOADS_KEY: [*preloads, CLIENT_PRELOAD]})
    except Exception as e:  # noqa: BLE001  (reported, never raised: see above)
        if _first_report(e):
            warnings.warn(f"{VARIABLE} is set, but dedupgraph could not be enabled: {e!r}", RuntimeWarning, stacklevel=2)


def _first_report(error: Exception) -> bool:
    # an invalid setting is reported once per process, whoever meets it first (see dedupgraph.settings)
    try:
        from dedupgraph.settings import first_report
    except Exception:  # noqa: BLE001  (dedupgraph itself is what failed)
        return True
    return first_report(error)


class _WhenDaskImported:  # an importlib.abc.MetaPathFinder
    """Finds nothing itself; wraps the loader of ``dask`` to call :func:`dask_imported` after it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "dask":
            return None
        sys.meta_path.remove(self)  # once only; also keeps the look-up below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ActivateAfter(spec.loader)
        return spec


class _ActivateAfter:  # an importlib.abc.Loader
    """A loader that runs the real one, puts it back in place, then acts on the variable."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # importlib.resources and friends must see dask's own loader
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        dask_imported()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
