"""Startup hook: ``DASK_DEDUPGRAPH__ENABLED=True`` switches the pass on in any Python process.

>>> # DASK_DEDUPGRAPH__ENABLED=True python analysis.py   (no import of dedupgraph needed)

``dedupgraph_startup.pth``, installed next to this module in site-packages,
runs at interpreter start-up; only when the variable holds a true value
(``True``, ``true``, ``1``, ``yes``) does it import this module and call
:func:`install`.  Otherwise nothing is imported at all.

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
# The .pth line tests these itself, case-insensitively, so as to import nothing otherwise.
TRUE_VALUES = ("true", "1", "yes")


def install() -> None:
    """Enable the pass as soon as dask is imported (at once if it already is)."""
    if "dask" in sys.modules:
        activate()
    elif not any(isinstance(f, _WhenDaskImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenDaskImported())


def requested() -> bool:
    """Whether the variable holds a true value (as the ``.pth`` line tests it)."""
    return os.environ.get(VARIABLE, "").strip().lower() in TRUE_VALUES


def activate() -> None:
    """Enable the pass for arrays, delayed and bags, guard every new Client, and give the route to schedulers.

    ``dedupgraph.enable()`` also makes ``dedupgraph.scheduler`` a scheduler
    preload: a ``dask scheduler`` (or a ``LocalCluster``) started in this
    process deduplicates every graph it receives, DataFrames included.

    Never raises: a broken installation must not break ``import dask``.
    """
    module = sys.modules.get("dedupgraph")
    if module is not None and not hasattr(module, "enable"):
        # dedupgraph itself is importing dask (a program that imports it first):
        # half imported, it cannot be enabled yet; it calls activate() itself once it can
        return
    try:
        import dask.config

        import dedupgraph
        from dedupgraph.routes.activation import CLIENT_PRELOAD, CLIENT_PRELOADS_KEY, preload_list

        dedupgraph.enable()
        # Every new Client first checks that its scheduler and workers run
        # this dedupgraph, and switches the pass off (with one warning) if not:
        # the scheduler unpickles the pass with every graph.
        preloads = preload_list(dask.config.get(CLIENT_PRELOADS_KEY, None))
        if CLIENT_PRELOAD not in preloads:
            dask.config.set({CLIENT_PRELOADS_KEY: [*preloads, CLIENT_PRELOAD]})
    except Exception as e:  # noqa: BLE001  (reported, never raised: see above)
        warnings.warn(f"{VARIABLE} is set, but dedupgraph could not be enabled: {e!r}", RuntimeWarning, stacklevel=2)


class _WhenDaskImported:  # an importlib.abc.MetaPathFinder
    """Finds nothing itself; wraps the loader of ``dask`` to call :func:`activate` after it."""

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
    """A loader that runs the real one, puts it back in place, then activates the pass."""

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
        activate()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
