"""Shared-memory segments: one file per content in ``/dev/shm``, mapped read-only by every process.

>>> layout((10, 3))
((0, 64), 67)
>>> segment_name("8c1f" * 8).startswith(f"dedupgraph-{os.getuid()}-8c1f")
True

A segment is a plain file in a tmpfs directory (``/dev/shm``, or
``DEDUPGRAPH_SHM_DIR``), named by the content digest of what it holds and by
the owner's uid, mode 0600.  Files rather than ``multiprocessing.shared_memory``:
before Python 3.13 its resource tracker unlinks a segment when the process that
created it exits, while other processes still use it.

Lifetime is tied to ``flock``: every process that maps a segment holds a shared
lock on it for as long as the mapping lives (the mapping lives as long as any
buffer, array or memoryview made from it).  When the last one goes, the
process tries an exclusive lock without waiting; getting it means nobody else
uses the segment, and the file is removed.  The kernel drops the locks of a
process that dies, even by SIGKILL, so its segments are removed by the next
process that releases them, or by a sweep: the first use of a directory in a
process, and every exit of a process that mapped segments, removes the
segments that no process locks.

:func:`mapped` tells what this process maps now and what it created (a
worker's ``/metrics`` shows it); the cache of mappings and two counters are
this module's per-process state.

>>> def fill(write):  # doctest: +SKIP
...     write(0, b"0123456789abcdef")
>>> view = create("0123abcd" * 4, 16, limit=0.5, fill=fill)  # doctest: +SKIP
>>> bytes(view[:4]), view.readonly  # doctest: +SKIP
(b'0123', True)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import mmap
import os
import re
import secrets
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
from dask.utils import format_bytes

try:
    import fcntl
except ImportError:  # Windows: no flock, and no /dev/shm either
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("dedupgraph")

DEFAULT_DIR = "/dev/shm"
DIR_VARIABLE = "DEDUPGRAPH_SHM_DIR"  # another tmpfs directory (tests use one per cluster)
PREFIX = "dedupgraph-"
# numpy wants its buffers aligned to their item size; 64 covers every dtype and cache lines
ALIGN = 64
# Left free on the file system whatever the limit says: other programs need /dev/shm too.
MARGIN = 16 * 2**20
_WRITE_AT_ONCE = 2**30  # Linux writes at most ~2 GiB per call
_DIGEST = re.compile(r"[0-9a-z]{8,80}")

Writer = Callable[[int, "bytes | bytearray | memoryview"], None]


class NoRoom(OSError):
    """A segment cannot be created: over the limit, no space, or no shared memory here."""


def layout(sizes: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Offsets of buffers of ``sizes`` placed one after another, each aligned; and the total size."""
    offsets = []
    end = 0
    for size in sizes:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + size
    return tuple(offsets), end


def segment_name(digest: str) -> str:
    """The file name of the segment holding ``digest``, for this user."""
    if not _DIGEST.fullmatch(digest):  # it comes from pickles: never a path
        raise ValueError(f"not a content digest: {digest!r}")
    return f"{PREFIX}{os.getuid()}-{digest}"


def segment_dir() -> Path | None:
    """The directory segments live in, or None where there is no usable shared memory.

    ``/dev/shm`` on Linux, or the directory named by ``DEDUPGRAPH_SHM_DIR``.
    """
    if not sys.platform.startswith("linux") or fcntl is None:
        _no_shared_memory(f"{sys.platform} has no /dev/shm")
        return None
    directory = Path(os.environ.get(DIR_VARIABLE) or DEFAULT_DIR)
    if not (directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)):
        _no_shared_memory(f"{directory} is not a writable directory")
        return None
    return directory


@functools.cache
def _no_shared_memory(why: str) -> None:
    # once per process and reason: every hoisted object would say the same
    logger.info("share='host' needs POSIX shared memory (%s): hoisted objects are shared per process", why)


# --- the per-process cache: path -> the mapping, and the finalizer that releases it

_lock = threading.Lock()
_maps: dict[str, tuple[weakref.ref[mmap.mmap], weakref.finalize]] = {}
# segments this process published, and their bytes, since it started (for /metrics)
_created = [0, 0]


@dataclass(frozen=True)
class Mapped:
    """What this process maps and has made of shared memory: see :func:`mapped`."""

    segments: int  #: segments mapped now
    nbytes: int  #: their bytes
    created: int  #: segments this process published (wrote and linked) since it started
    created_bytes: int  #: their bytes


def mapped() -> Mapped:
    """The segments this process maps now, and those it created since it started.

    >>> now = mapped()
    >>> now.segments >= 0 and now.nbytes >= 0 and now.created >= 0
    True

    A segment counts while any buffer, array or memoryview made from its
    mapping lives (see the module's doc); its pages are shared with every
    other process of the host that maps it.
    """
    with _lock:
        live = [mm for mm in (ref() for ref, _ in _maps.values()) if mm is not None]
        created, created_bytes = _created
    return Mapped(len(live), sum(len(mm) for mm in live), created, created_bytes)


def _cached(path: str) -> mmap.mmap | None:
    entry = _maps.get(path)
    return None if entry is None else entry[0]()


def _remember(path: str, mm: mmap.mmap, fd: int, st: os.stat_result, directory: Path) -> None:
    """Keep ``mm`` findable by path; when it dies, release its lock and maybe the file."""
    # finalize, not a callback on the weakref: it also runs at interpreter exit
    done = weakref.finalize(mm, _release, fd, path, st.st_ino, st.st_dev)
    for dead in [p for p, (ref, _) in _maps.items() if ref() is None]:
        del _maps[dead]
    _maps[path] = (weakref.ref(mm), done)
    _sweep_at_exit(str(directory))


def _release(fd: int, path: str, ino: int, dev: int) -> None:
    """Drop this process's lock; if nobody else holds one, remove the file.

    Runs from garbage collection, in any thread: it must not take ``_lock``.
    """
    try:
        # converting our shared lock: fails at once if any other process holds one
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass
    else:
        _unlink_if_same(path, ino, dev)
    finally:
        os.close(fd)


def _unlink_if_same(path: str, ino: int, dev: int) -> bool:
    # only the file we locked: never one created anew under the same name
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_ino, st.st_dev) != (ino, dev):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def attach(digest: str, size: int, directory: Path | None = None) -> memoryview | None:
    """A read-only view of the segment of ``digest``, or None if this host has none (of ``size`` bytes).

    The segment stays locked, so it is not removed, while the view or any
    buffer made from it lives.  A process maps each segment once.
    """
    directory = directory or segment_dir()
    if directory is None:
        return None
    _sweep_once(str(directory))
    path = str(directory / segment_name(digest))
    with _lock:
        mm = _cached(path)
        if mm is None:
            mm = _map_existing(path, size, directory)
    if mm is None or len(mm) != size:
        return None
    return memoryview(mm)


def _map_existing(path: str, size: int, directory: Path) -> mmap.mmap | None:
    for _ in range(5):  # only a removal between our open and our lock makes us retry
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:  # absent, or not ours to read
            return None
        try:
            # waits only while a releasing process checks whether it was the last
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # removed before we locked it: look again
                os.close(fd)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size != size:
                os.close(fd)
                return None
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except OSError:
            os.close(fd)
            return None
        _remember(path, mm, fd, st, directory)
        return mm
    return None


def create(
    digest: str,
    size: int,
    limit: float | int,
    fill: Callable[[Writer], None],
    directory: Path | None = None,
) -> memoryview | None:
    """The segment of ``digest``: attached if it exists, else made here by ``fill(write)``.

    ``fill`` gets ``write(offset, data)``.  Returns None, with one DEBUG line,
    when the segment cannot be made (``limit``: see :func:`limit_bytes`).
    Exceptions of ``fill`` propagate, and leave nothing behind.
    """
    view = attach(digest, size, directory)
    if view is not None:
        return view
    try:
        with SegmentWriter(digest, size, limit, directory) as writer:
            fill(writer.write)
    except NoRoom as e:
        logger.debug("share='host': %s of %s kept per process: %s", format_bytes(size), digest, e)
        return None
    return writer.view


class SegmentWriter:
    """Make one segment: reserve it, write it, publish it.

    >>> with SegmentWriter(digest, size, limit=0.5) as writer:  # doctest: +SKIP
    ...     writer.write(0, data)
    >>> writer.view  # doctest: +SKIP
    <memory at 0x...>

    Entering reserves the space under a host-wide lock (so concurrent writers
    respect the limit together) or raises :class:`NoRoom`.  The file is
    written under a temporary name; a clean exit links it under its final name
    and maps it read-only into ``view``.  If another process published the same
    content first, ``view`` maps theirs.  An exception removes the file.
    """

    def __init__(self, digest: str, size: int, limit: float | int, directory: Path | None = None) -> None:
        if size <= 0:
            raise ValueError(f"a segment needs a positive size, got {size}")
        self.directory = directory or segment_dir()
        self.digest = digest
        self.size = size
        self.limit = limit
        self.view: memoryview | None = None
        self._fd = -1
        self._tmp = ""

    def __enter__(self) -> SegmentWriter:
        if self.directory is None:
            raise NoRoom("no shared memory on this host")
        _sweep_once(str(self.directory))
        final = segment_name(self.digest)
        self._tmp = str(self.directory / f"{final}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        with _host_lock(self.directory):
            _check_room(self.directory, self.size, self.limit)
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                # a sweep removes only files nobody locks: not this one
                fcntl.flock(self._fd, fcntl.LOCK_SH)
                # reserve every page now: writing to a mapping of a full tmpfs kills with SIGBUS
                os.posix_fallocate(self._fd, 0, self.size)
            except OSError as e:
                self._discard()
                raise NoRoom(f"cannot reserve {format_bytes(self.size)} in {self.directory}: {e}") from e
        return self

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` of the segment."""
        view = memoryview(data).cast("B")
        if offset < 0 or offset + view.nbytes > self.size:
            raise ValueError(f"write of {view.nbytes} bytes at {offset} is outside the segment ({self.size})")
        while view.nbytes:
            written = os.pwrite(self._fd, view[:_WRITE_AT_ONCE], offset)
            view, offset = view[written:], offset + written

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if typ is not None:
            self._discard()
            return
        assert self.directory is not None
        path = str(self.directory / segment_name(self.digest))
        try:
            os.link(self._tmp, path)  # never replaces: a published segment is never overwritten
        except FileExistsError:
            self._discard()
            self.view = attach(self.digest, self.size, self.directory)
            if self.view is None:
                raise NoRoom(f"{path} exists but cannot be mapped") from None
            return
        except OSError as e:
            self._discard()
            raise NoRoom(f"cannot publish {path}: {e}") from e
        os.unlink(self._tmp)
        # mapped under its published name, as every other process maps it (our
        # lock on the written file keeps it from being removed meanwhile)
        with _lock:
            mm = _map_existing(path, self.size, self.directory)
            _created[0] += 1
            _created[1] += self.size
        self._discard()
        if mm is None:
            raise NoRoom(f"{path} cannot be mapped")
        self.view = memoryview(mm)

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextlib.contextmanager
def _host_lock(directory: Path) -> Iterator[None]:
    """Serialize reservations on one host: a lock on the directory itself, no file to leave behind."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def limit_bytes(limit: float | int, directory: Path) -> int:
    """``limit`` in bytes: a float is a fraction of the file system's size, an int a number of bytes.

    >>> limit_bytes(1024, Path("."))
    1024
    """
    if isinstance(limit, float):
        fs = os.statvfs(directory)
        return int(limit * fs.f_blocks * fs.f_frsize)
    return limit


def usage(directory: Path) -> int:
    """Bytes that dedupgraph's files (every user's, segments and reservations) take in ``directory``."""
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(PREFIX):
                with contextlib.suppress(OSError):  # removed meanwhile
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_blocks * 512
    return total


def _check_room(directory: Path, size: int, limit: float | int) -> None:
    allowed = limit_bytes(limit, directory)
    used = usage(directory)
    if used + size > allowed:
        raise NoRoom(
            f"dedupgraph's shared memory would exceed its limit ({format_bytes(used)} used + "
            f"{format_bytes(size)} > {format_bytes(allowed)}, share-limit {limit!r} of {directory})"
        )
    fs = os.statvfs(directory)
    free = fs.f_bavail * fs.f_frsize
    if size + MARGIN > free:
        raise NoRoom(f"{directory} has {format_bytes(free)} free, {format_bytes(size)} needed")
    # workers leave segments out of the memory their limits watch (placement.accounting):
    # a segment the host cannot hold now must not be made behind their back
    available = psutil.virtual_memory().available
    if size + MARGIN > available:
        raise NoRoom(f"the host has {format_bytes(available)} of memory available, {format_bytes(size)} needed")


def sweep(directory: Path | None = None) -> list[str]:
    """Remove this user's segments (and unfinished ones) that no process uses; their names.

    >>> sweep(Path("/nonexistent"))
    []
    """
    directory = directory or segment_dir()
    if directory is None or fcntl is None:
        return []
    mine = f"{PREFIX}{os.getuid()}-"
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(mine):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # in use: somebody holds a lock
            continue
        else:
            if _unlink_if_same(entry.path, st.st_ino, st.st_dev):
                removed.append(entry.name)
        finally:
            os.close(fd)
    if removed:
        logger.debug("removed %d unused shared-memory segment(s) from %s", len(removed), directory)
    return removed


@functools.cache
def _sweep_once(directory: str) -> None:
    # leftovers of processes that died (or of a crashed host), once per process
    sweep(Path(directory))


@functools.cache
def _sweep_at_exit(directory: str) -> None:
    # our own mappings are released by their finalizers; this catches the
    # segments of processes killed before they could release theirs
    atexit.register(sweep, Path(directory))


def _forget_after_fork() -> None:
    """In a forked child: never release the parent's locks (a lock belongs to the shared file)."""
    global _lock
    _lock = threading.Lock()
    _created[:] = [0, 0]  # the parent's, not the child's
    for _, done in _maps.values():
        detached = done.detach()
        if detached is not None:
            os.close(detached[2][0])  # the child's copy of the descriptor; the parent keeps its lock
    _maps.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
