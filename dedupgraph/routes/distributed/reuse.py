"""What a scheduler keeps for reuse across computations: hoisted keys, least recently used first out.

>>> kept = KeptObjects()
>>> kept.used("client-1", [("dedup-Model-aa", 300)], limit=1000)
(['dedup-Model-aa'], [])
>>> kept.used("client-2", [("dedup-Table-bb", 600), ("dedup-Model-aa", 300)], limit=1000)
(['dedup-Table-bb'], [])
>>> kept.used("client-1", [("dedup-Lookup-cc", 200)], limit=1000)  # over the limit: the oldest goes
(['dedup-Lookup-cc'], ['dedup-Table-bb'])
>>> kept.client_closed("client-1")  # kept for client-1 alone
['dedup-Lookup-cc']
>>> [entry.key for entry in kept.entries()], kept.total_bytes
(['dedup-Model-aa'], 300)

A hoisted key is named by its content (``dedup-<type>-<digest>``), and a
scheduler that still holds a key when a later graph brings it again keeps
the task it has, in memory where it is: the later computation neither
ships the object to a worker nor unpickles it there.  So keeping is only
*wanting*: the scheduler plugin asks its scheduler to keep each key listed
first here, as a client would (a pseudo-client, as distributed's own
``fire-and-forget``), and lets go of each key listed second.  The task keeps
its ``run_spec``, so a kept object lost with its worker is recomputed from it.

This class is the bookkeeping alone, on the scheduler's event loop: which
keys, their pickled sizes, the clients whose graphs used each, and their
order of last use.  ``limit``: the most bytes kept at once (see
:func:`limit_in_bytes`); an object larger than it is not kept.  A key is
kept while a client whose graph used it is connected, and until the limit
pushes it out or :meth:`forget` drops everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

#: the pseudo-client that wants the kept keys on the scheduler
KEEPER = "dedupgraph-reuse"


@dataclass
class KeptObject:
    """One kept key: its pickled size and the clients whose graphs used it."""

    key: Hashable
    nbytes: int
    clients: set[str] = field(default_factory=set)


class KeptObjects:
    """The keys one scheduler keeps for reuse, least recently used first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, KeptObject] = OrderedDict()
        self.total_bytes = 0

    def used(self, client: str, objects: Iterable[tuple[Hashable, int]], limit: int) -> tuple[list[Hashable], list[Hashable]]:
        """A graph of ``client`` used these ``(key, pickled size)``: (keys now kept, keys let go).

        The objects of this graph count as the most recently used; the
        least recently used are let go until the rest fits in ``limit``.
        """
        added: list[Hashable] = []
        for key, nbytes in objects:
            entry = self._entries.get(key)
            if entry is None:
                if nbytes > limit:
                    continue  # would push out everything and still not fit
                entry = self._entries[key] = KeptObject(key, nbytes)
                self.total_bytes += nbytes
                added.append(key)
            entry.clients.add(client)
            self._entries.move_to_end(key)
        released = self._shrink_to(limit)
        return [key for key in added if key in self._entries], [key for key in released if key not in added]

    def client_closed(self, client: str) -> list[Hashable]:
        """``client`` is gone: the keys kept for it alone, now let go."""
        gone = []
        for entry in list(self._entries.values()):
            entry.clients.discard(client)
            if not entry.clients:
                gone.append(self._remove(entry.key))
        return gone

    def forget(self) -> list[Hashable]:
        """Let go of every kept key; returns them."""
        keys = list(self._entries)
        self._entries.clear()
        self.total_bytes = 0
        return keys

    def drop_missing(self, exists: Callable[[Hashable], bool]) -> None:
        """Forget entries whose key the scheduler no longer has (a restart, a forced cancel)."""
        for key in [key for key in self._entries if not exists(key)]:
            self._remove(key)

    def entries(self) -> list[KeptObject]:
        """The kept keys, least recently used first."""
        return list(self._entries.values())

    def _shrink_to(self, limit: int) -> list[Hashable]:
        released = []
        while self._entries and self.total_bytes > limit:
            released.append(self._remove(next(iter(self._entries))))
        return released

    def _remove(self, key: Hashable) -> Hashable:
        entry = self._entries.pop(key)
        self.total_bytes -= entry.nbytes
        return key


def limit_in_bytes(reuse_limit: float | int, worker_memory_limits: Iterable[int | None], host_memory: int) -> int:
    """The ``reuse-limit`` setting in bytes: a size as it is; a fraction of the smallest worker's memory limit.

    >>> limit_in_bytes(2**32, [], 0), limit_in_bytes(0.1, [8_000, 4_000, None], 64_000)
    (4294967296, 400)
    >>> limit_in_bytes(0.1, [None], 64_000), limit_in_bytes(0, [4_000], 64_000)  # no limits: the host's memory
    (6400, 0)

    Each worker may hold a copy of every kept object, so the fraction is of
    the smallest worker.  Workers without a memory limit count as the host's
    memory (``host_memory``, the scheduler's host when nothing better is known).
    """
    if isinstance(reuse_limit, int):
        return reuse_limit
    limits = [limit for limit in worker_memory_limits if limit]
    return int(reuse_limit * (min(limits) if limits else host_memory))
