"""Helpers that rewritten tasks call on the workers.

>>> call(max, 1, 2)
2

This module's names are part of the graphs dedupgraph writes: keep them
importable and stable, since clients, schedulers and workers must agree.
"""

from __future__ import annotations

from typing import Any, Callable


def call(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a hoisted function: tasks whose function was hoisted become ``call(ref, *args)``."""
    return func(*args, **kwargs)
