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
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dedupgraph.core.fingerprint import Fingerprint

#: the pseudo-client that wants the kept keys on the scheduler
KEEPER = "dedupgraph-reuse"
#: hoisted objects pickled smaller than this are not kept: shipping them again
#: costs about what holding their key between computations does
KEEP_MIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Content:
    """What the pass made of one hoisted object: its content key (``dedup-<type>-<digest>``), fingerprint and value."""

    key: str
    fingerprint: Fingerprint
    value: Any = field(repr=False)


@dataclass
class KeptObject:
    """One kept key: its pickled size, the clients whose graphs used it, and its content.

    ``content``: the object itself, as the scheduler unpickled it, under the
    key the pass gave its content (the graph key may differ, as with
    ``share="host"``): what a client that leaves the object out of a later
    graph is told of, and what the scheduler puts back
    (``dedupgraph.routes.distributed.uploads``).
    """

    key: Hashable
    nbytes: int
    clients: set[str] = field(default_factory=set)
    content: Content | None = None


class KeptObjects:
    """The keys one scheduler keeps for reuse, least recently used first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, KeptObject] = OrderedDict()
        self.total_bytes = 0

    def used(
        self,
        client: str,
        objects: Iterable[tuple[Hashable, int]],
        limit: int,
        contents: Mapping[Hashable, Content] | None = None,
    ) -> tuple[list[Hashable], list[Hashable]]:
        """A graph of ``client`` used these ``(key, pickled size)``: (keys now kept, keys let go).

        The objects of this graph count as the most recently used; the
        least recently used are let go until the rest fits in ``limit``.
        ``contents``: key -> its :class:`Content`, for the keys that have one.
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
            if contents and key in contents and entry.content is None:
                entry.content = contents[key]
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

    def offered(self, min_bytes: int, outline: Callable[[Any], str]) -> list[list[str]]:
        """``[type name, outline, content key]`` of each kept object of at least ``min_bytes``: what clients may leave out.

        >>> kept = KeptObjects()
        >>> from dedupgraph.core.fingerprint import Fingerprint
        >>> content = Content("dedup-list-aa", Fingerprint("aa", 5000, "list"), [0])
        >>> _ = kept.used("c", [("dedup-list-aa", 5000), ("dedup-list-bb", 50)], 10**6, {"dedup-list-aa": content})
        >>> kept.offered(1000, lambda value: f"len {len(value)}"), kept.find(["dedup-list-aa", "dedup-list-cc"]) == {"dedup-list-aa": content}
        ([['list', 'len 1', 'dedup-list-aa']], True)
        """
        return [
            [type(e.content.value).__name__, outline(e.content.value), e.content.key] for e in self._entries.values()
            if e.content is not None and e.nbytes >= min_bytes
        ]

    def find(self, contents: Iterable[str]) -> dict[str, Content]:
        """Content key -> its :class:`Content`, for those of ``contents`` kept here."""
        wanted = set(contents)
        return {e.content.key: e.content for e in self._entries.values() if e.content is not None and e.content.key in wanted}

    def holds(self, key: Hashable) -> bool:
        """Whether ``key`` is kept here."""
        return key in self._entries

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


def limit_in_bytes(reuse_limit: float | int, worker_memory_limits: Iterable[int | None], scheduler_memory: int) -> int:
    """The ``reuse-limit`` setting in bytes: a size as it is; a fraction of the smallest memory that holds copies.

    >>> limit_in_bytes(2**32, [], 0), limit_in_bytes(0.1, [8_000, 4_000, None], 64_000)
    (4294967296, 400)
    >>> limit_in_bytes(0.1, [None], 64_000), limit_in_bytes(0.1, [80_000], 16_000), limit_in_bytes(0, [4_000], 64_000)
    (6400, 1600, 0)

    Each worker may hold a copy of every kept object, and the scheduler holds
    one in each kept task's recipe: the fraction is of the smallest of the
    workers' memory limits and the scheduler's memory (``scheduler_memory``).
    Workers without a memory limit do not count.
    """
    if isinstance(reuse_limit, int):
        return reuse_limit
    limits = [limit for limit in worker_memory_limits if limit] + [scheduler_memory]
    return int(reuse_limit * min(limits))
