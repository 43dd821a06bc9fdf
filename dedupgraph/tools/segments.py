"""dedupgraph's shared-memory segments on this host, for ``dedupgraph segments [--clean]``.

>>> found = segments(Path("/nonexistent"))
>>> found
[]
>>> print(table(found, Path("/nonexistent")))
/nonexistent: no dedupgraph segments of this user

A process that maps a segment holds a shared ``flock`` on it (see
:mod:`dedupgraph.placement.segments`); the kernel drops the locks of a process
that dies, even by SIGKILL.  So a segment that no process locks is one that
no live process maps: a leftover, which ``--clean`` removes (the sweep that
the next ``share="host"`` cluster on this host would run anyway).  Only the
current user's segments are listed and removed: others' are not ours to read.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from dask.utils import format_bytes

import dedupgraph.placement.segments as shared_memory

try:
    import fcntl
except ImportError:  # Windows: no flock, and no segments either
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Segment:
    """One file of this user's in the segment directory.

    >>> Segment("dedupgraph-0-ab.123-cafe.tmp", 4096, 1.0, True).unfinished
    True
    """

    name: str
    nbytes: int  #: bytes it takes in shared memory (allocated, not apparent)
    age: float  #: seconds since it was last written
    in_use: bool | None  #: whether a live process maps it (None: could not tell)

    @property
    def unfinished(self) -> bool:
        """A reservation never published (its writer died, or is writing now)."""
        return self.name.endswith(".tmp")


def segments(directory: Path) -> list[Segment]:
    """This user's dedupgraph files in ``directory``, oldest first; none are changed.

    >>> [s.in_use for s in segments(shared_memory.segment_dir())]  # doctest: +SKIP
    [False, True]
    """
    mine = f"{shared_memory.PREFIX}{os.getuid()}-"
    now = time.time()
    found = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(mine)]
    except OSError:
        return []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:  # removed meanwhile
            continue
        if stat.S_ISREG(st.st_mode):
            found.append(Segment(entry.name, st.st_blocks * 512, max(0.0, now - st.st_mtime), in_use(entry.path)))
    return sorted(found, key=lambda s: (-s.age, s.name))


def in_use(path: str) -> bool | None:
    """Whether a process holds a lock on ``path`` (maps it, or is writing it); None if it cannot be told.

    >>> in_use("/nonexistent/dedupgraph-0-00") is None
    True

    Asks for an exclusive lock without waiting and lets it go at once: the
    file itself is left as it is.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # drops our lock, if we got it
    return False


def table(found: list[Segment], directory: Path) -> str:
    """What ``dedupgraph segments`` prints.

    >>> print(table([Segment("dedupgraph-0-ab", 4096, 5.0, False)], Path("/dev/shm")))
    /dev/shm: 1 dedupgraph segment of this user, 4.00 kiB; 1 mapped by no live process
    segment          size      age  in use
    dedupgraph-0-ab  4.00 kiB  5 s  no (left by a process that died)
    dedupgraph segments --clean removes those mapped by no live process.
    """
    if not found:
        return f"{directory}: no dedupgraph segments of this user"
    leftovers = [s for s in found if s.in_use is False]
    lines = [
        f"{directory}: {len(found)} dedupgraph segment{'' if len(found) == 1 else 's'} of this user, "
        f"{format_bytes(sum(s.nbytes for s in found))}; {len(leftovers)} mapped by no live process"
    ]
    rows = [("segment", "size", "age", "in use")] + [
        (s.name, format_bytes(s.nbytes), format_age(s.age), _use(s)) for s in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0])).rstrip() for row in rows]
    if leftovers:
        lines.append("dedupgraph segments --clean removes those mapped by no live process.")
    return "\n".join(lines)


def _use(s: Segment) -> str:
    if s.in_use is None:
        return "unknown"
    if s.in_use:
        return "yes (being written)" if s.unfinished else "yes"
    return "no (unfinished: its writer died)" if s.unfinished else "no (left by a process that died)"


def format_age(seconds: float) -> str:
    """A duration as a person reads an age.

    >>> format_age(4.2), format_age(125), format_age(3 * 3600 + 60), format_age(2 * 86400 + 7200)
    ('4 s', '2 min', '3 h 1 min', '2 d 2 h')
    """
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def clean(directory: Path) -> list[Segment]:
    """Remove this user's segments that no live process maps (``shared_memory.sweep``); those removed.

    >>> clean(Path("/nonexistent"))
    []
    """
    before = {s.name: s for s in segments(directory)}
    return [before.get(name, Segment(name, 0, 0.0, False)) for name in shared_memory.sweep(directory)]
