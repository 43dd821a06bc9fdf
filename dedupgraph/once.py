"""Say something once per process: a flag under a lock.

>>> told = Once()
>>> bool(told), told(), told(), bool(told)
(False, True, False, True)

A notebook that creates a ``Client`` per cell, or a scheduler that receives
thousands of graphs, must not repeat the same paragraph. Each message that is
said once gets its own module-level ``Once``: the only state it keeps is
whether it was said, and it never grows.
"""

from __future__ import annotations

import threading


class Once:
    """True the first time it is called in this process, False ever after; safe across threads."""

    __slots__ = ("_done", "_lock")

    def __init__(self) -> None:
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
        return first

    def __bool__(self) -> bool:
        """Whether it was said already: a look that says nothing."""
        return self._done
