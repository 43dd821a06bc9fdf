"""Shared segments kept out of each worker's memory: pause, spill, terminate and the dashboard.

>>> pages = segment_pages()  # this process: the segments' resident and proportional bytes
>>> pages.resident >= pages.proportional >= 0
True

Distributed pauses, spills and restarts a worker by its process memory, the
RSS, which counts every page of a ``share="host"`` segment that the worker
touched, as if each worker held its own copy. Here a worker's process memory
leaves the segments out: it is what the worker holds of its own. The
segments are the host's, counted once (``dedupgraph_shm_*`` on each worker's
``/metrics``), and bounded apart from the workers' limits: a segment is made
only within ``share-limit`` and while the host has the memory available for
it (:func:`dedupgraph.placement.segments.create`), otherwise the object stays
per process, where the workers' limits see it.

The first time a worker maps a segment, :func:`count_segments_once` puts
this into it, in the two places distributed measures:

- the worker: ``worker.monitor.get_process_memory``, the one call behind the
  worker's pause and spill, its heartbeat and the dashboard's process memory
  (distributed keeps it as a one-line method so that tests can replace it,
  which makes it the seam most likely to survive its upgrades);
- its nanny, through :class:`NannyCountsSegmentsOnce`: the nanny restarts a
  worker over the terminate fraction by the worker's RSS; the plugin lets the
  nanny's own check run only when the worker is over it without the segments.

A worker that maps no segment is measured as plain distributed measures it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import NannyPlugin

import dedupgraph.placement.segments as segments
from dedupgraph.once import Once

if TYPE_CHECKING:
    from distributed import Nanny, Worker

logger = logging.getLogger("dedupgraph")

NANNY_PLUGIN = "dedupgraph-segments-counted-once"
#: the segments' pages are read from smaps again after this long, or when what is mapped changes
RECHECK_SECONDS = 2.0


@dataclass(frozen=True)
class SegmentPages:
    """A process's mappings of dedupgraph's segments: what its RSS counts of them, and its fair share."""

    resident: int = 0  #: bytes of the segments in the process's RSS
    proportional: int = 0  #: its share (PSS): each page divided by the processes that map it


def segment_pages(pid: int | str = "self") -> SegmentPages:
    """The resident and proportional bytes of dedupgraph's segments that process ``pid`` maps.

    >>> segment_pages(os.getpid()).resident >= 0
    True

    Read from ``/proc/PID/smaps``; nothing (zeros) where that cannot be read.
    """
    directory = segments.segment_dir()
    if directory is None:
        return SegmentPages()
    prefix = os.fsencode(os.path.join(os.path.realpath(directory), segments.PREFIX))  # smaps shows resolved paths
    try:
        with open(f"/proc/{pid}/smaps", "rb") as smaps:
            data = smaps.read()
    except OSError:
        return SegmentPages()
    resident = proportional = 0
    # the prefix appears only as the path in a mapping's first line; its Rss and
    # Pss lines follow (found with bytes.find: a process has thousands of mappings)
    at = data.find(prefix)
    while at != -1:
        rss, pss = data.find(b"\nRss:", at), data.find(b"\nPss:", at)
        if rss == -1 or pss == -1:
            break
        resident += _kilobytes(data, rss + 5)
        proportional += _kilobytes(data, pss + 5)
        at = data.find(prefix, pss)
    return SegmentPages(resident, proportional)


def _kilobytes(data: bytes, start: int) -> int:
    """The number of ``"   1234 kB"`` at ``start``, in bytes."""
    return int(data[start : data.index(b"kB", start)]) * 1024


def shmem_resident(pid: int | str = "self") -> int:
    """Bytes of shared memory in process ``pid``'s RSS (``RssShmem``): a counter, cheap to read.

    >>> shmem_resident() >= 0
    True
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssShmem:"):
                    return _kilobytes(line, 9)
    except (OSError, ValueError):
        pass
    return 0


class SegmentsInRss:
    """The segments' pages in a process's RSS, kept up to date cheaply: what to leave out of its memory.

    >>> in_rss = SegmentsInRss("self")
    >>> in_rss(mapped=(0, 0)) >= 0
    True

    ``/proc/PID/smaps`` names the pages of each mapping but walks every one
    of them, far too slow for every memory sample of a worker; ``RssShmem``
    counts all shared memory at once, the segments' and anyone else's. So
    smaps is read when what is mapped changes and every ``RECHECK_SECONDS``,
    and in between the segments' pages follow ``RssShmem`` (a task touching
    a segment's pages for the first time raises both).
    """

    def __init__(self, pid: int | str) -> None:
        self.pid = pid
        # what was mapped, when smaps was read, the segments' pages and RssShmem then:
        # one tuple, replaced whole, since the event loop and task threads both ask
        self._last: tuple[object, float, int, int] = (None, -RECHECK_SECONDS, 0, 0)

    def __call__(self, mapped: object) -> int:
        """The segments' pages now, given what the process maps (any value that changes with it)."""
        shmem = shmem_resident(self.pid)
        now = time.monotonic()
        last = self._last
        if mapped != last[0] or now - last[1] > RECHECK_SECONDS:
            last = self._last = (mapped, now, segment_pages(self.pid).resident, shmem)
        return min(max(last[2] + shmem - last[3], 0), shmem)


def count_segments_once() -> None:
    """In a worker that maps a segment: leave the host's segments out of its memory (idempotent).

    Called where a task or a hoisted key maps a segment; outside a
    distributed worker it does nothing.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    try:
        with _installing:
            if _counts_once(worker.monitor.get_process_memory):
                return
            worker.monitor.get_process_memory = _process_memory(worker.monitor.get_process_memory)  # type: ignore[method-assign]
        if worker.nanny:
            worker.loop.add_callback(_tell_nanny, worker)
    except Exception:  # noqa: BLE001  (never a task's failure: the worker is measured as distributed measures it)
        if _install_failure_told():
            logger.warning("dedupgraph: could not leave shared segments out of this worker's memory", exc_info=True)


# one worker's tasks map segments in several threads: one of them installs
_installing = threading.Lock()
_install_failure_told = Once()


def _counts_once(measure: Callable[[], Any]) -> bool:
    return bool(getattr(measure, "counts_segments_once", False))


def _process_memory(measure: Callable[[], int]) -> Callable[[], int]:
    """``measure`` (the RSS) less the segments' pages in it."""
    in_rss = SegmentsInRss("self")

    def process_memory() -> int:
        rss = measure()
        now = segments.mapped()
        return rss if now.segments == 0 else max(rss - in_rss((now.segments, now.nbytes)), 0)

    process_memory.counts_segments_once = True  # type: ignore[attr-defined]
    return process_memory


async def _tell_nanny(worker: Worker) -> None:
    from distributed.protocol.pickle import dumps

    try:
        async with worker.rpc(worker.nanny) as nanny:
            await nanny.plugin_add(plugin=dumps(NannyCountsSegmentsOnce()), name=NANNY_PLUGIN)
    except Exception:  # noqa: BLE001  (the nanny measures as plain distributed does: logged)
        logger.warning("dedupgraph: could not tell the nanny to count shared segments once", exc_info=True)


class NannyCountsSegmentsOnce(NannyPlugin):
    """The nanny restarts its worker over the terminate fraction only if it is over it without the segments.

    >>> NannyCountsSegmentsOnce().name
    'dedupgraph-segments-counted-once'

    The nanny's own check still decides, and still kills: this only skips
    it while the worker is under the fraction without the segments' pages.
    """

    name = NANNY_PLUGIN

    def setup(self, nanny: Nanny) -> None:
        callback = nanny.periodic_callbacks.get("memory_monitor")
        manager = getattr(nanny, "memory_manager", None)
        if callback is None or manager is None or _counts_once(callback.callback):
            return  # no memory limit or no terminate fraction: nothing to correct
        callback.callback = _nanny_check(nanny, manager, callback.callback)


def _nanny_check(nanny: Nanny, manager: Any, check: Callable[[], Any]) -> Callable[[], None]:
    import psutil  # distributed's own dependency

    in_rss: list[SegmentsInRss] = []  # for the worker process of now: a restart makes a new one

    def memory_monitor() -> None:
        process = getattr(nanny.process, "process", None)
        pid = getattr(process, "pid", None)
        limit, fraction = manager.memory_limit, manager.memory_terminate_fraction
        if pid is not None and limit and fraction is not False:
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                rss = 0
            if rss > fraction * limit:
                if not in_rss or in_rss[0].pid != pid:
                    in_rss[:] = [SegmentsInRss(pid)]
                if rss - in_rss[0](mapped=pid) <= fraction * limit:
                    return  # over only by counting the host's segments as the worker's own memory
        check()

    memory_monitor.counts_segments_once = True  # type: ignore[attr-defined]
    return memory_monitor
