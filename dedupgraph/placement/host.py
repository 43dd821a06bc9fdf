"""``share="host"``: a hoisted object's large buffers live once per host, in shared memory.

>>> import numpy as np
>>> from dedupgraph.core.fingerprint import content_fingerprint
>>> from dedupgraph.core.plan import Hoist, hoisted_key
>>> table = np.arange(300_000.0)
>>> fp = content_fingerprint(table)
>>> node, used = placement(Settings(share="host"))(Hoist(hoisted_key(fp), fp, ("a", "b"), table))
>>> node.key == "dedup-host-ndarray-" + fp.digest, used.dependencies == {node.key}
(True, True)
>>> unwrap(stored(node.args[0])) is table   # within one process: the object itself
True

The routes (the pass, ``deduplicate``, through ``dedupgraph.placement``) put a :class:`HostShared` under the
hoisted key, ``dedup-host-<Label>-<digest>``, computed by
``Task(key, stored, shared)``, and give each carrying task
``Task(None, unwrap, TaskRef(key))`` where the object was.  A worker process
keeps the small :class:`HostShared` under the key; ``unwrap`` unpickles the
object once per process from its pickle header and the buffers, mapped
read-only from the segment of that content (``dedupgraph.placement.segments``).

What travels, and why: distributed moves a key's value between workers by
serializing it, and the receiver keeps what it deserialized.  Between two
processes of one host (same IP address), a :class:`HostShared` therefore
travels as a *ticket*: digest, sizes and pickle header, and the receiver maps
the segment.  The scheduler sends the hoisted key's task as a ticket too, and
the worker that runs it pulls the bytes from the scheduler in chunks of
``CHUNK`` bytes straight into a new segment (no full private copy on the way).
Everything else carries the buffers themselves: a transfer to another host
(the receiver there publishes a segment for its host), a scatter from a
client, a spill to disk, a local ``processes`` scheduler.  A receiver that
gets a ticket but cannot map the segment (the same IP address but another
``/dev/shm``, as containers with host networking have) pulls the bytes from
the sender, the scheduler, or any worker holding the key.  A segment that
cannot be made (over ``share_limit``, no ``/dev/shm``) leaves a private copy
in that process, as with ``share="process"``.

The names used in graphs (``stored``, ``unwrap``, ``from_data``,
``from_ticket``, ``Layout``, ``HostShared``) must stay importable and stable:
clients, schedulers and workers must agree on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, SupportsIndex

from dask._task_spec import GraphNode, Task, TaskRef
from dask.base import normalize_token
from dask.sizeof import sizeof
from dask.utils import format_bytes

import dedupgraph.placement.segments as segments
from dedupgraph.core.fingerprint import pickled_parts
from dedupgraph.core.plan import Hoist
from dedupgraph.core.rewrite import Place
from dedupgraph.placement.accounting import count_segments_once
from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")

# A pull requests chunks of at most CHUNK bytes, WINDOW of them in flight, and
# writes each to the segment as it arrives: it holds at most WINDOW chunks in
# private memory, and the allocator keeps about one after them.  Chunks are
# also at most 1/64 of the object, so that this stays within 1/8 of it.  Eight in
# flight pulled faster than four (docs/benchmarks.rst, "Measurements behind the code").
CHUNK = 4 * 2**20
WINDOW = 8
MIN_CHUNK = 256 * 2**10
SCHEDULER = "scheduler"  # a pull source: the scheduler of this worker (or client)
HANDLER = "dedupgraph_segment_chunk"  # the RPC that serves chunks, added to servers that send tickets
_PULL_TIMEOUT = 120  # seconds per chunk
_NOTHING = object()


class SharedObjectUnavailable(RuntimeError):
    """No process could provide the bytes of a host-shared object this process must map."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """What any process needs to find, map and unpickle a host-shared object."""

    digest: str  #: content digest: names the segment
    key: str  #: the graph key the object lives under
    label: str
    header: bytes = dataclasses.field(repr=False)  #: the pickle, buffers out of band
    sizes: tuple[int, ...]  #: the out-of-band buffers, in order
    limit: float | int  #: ``share_limit``, checked where a segment is made

    @property
    def offsets(self) -> tuple[int, ...]:
        return segments.layout(self.sizes)[0]

    @property
    def nbytes(self) -> int:
        """The segment's size."""
        return segments.layout(self.sizes)[1]


class HostShared:
    """The value under a host-shared key; ``unwrap`` gives the tasks the object.

    >>> import numpy as np
    >>> shared = HostShared.wrap(np.ones(3), Layout("ab" * 16, "k", "ndarray", b"", (), 0.5))
    >>> shared.object()
    array([1., 1., 1.])

    It holds, depending on where it is: the original object (where the graph
    was built, and on schedulers), received buffers not yet in shared memory,
    a read-only mapping of the segment, a private copy (no segment could be
    made), or only a ticket until the bytes are pulled.  Thread-safe.
    """

    __slots__ = ("layout", "_original", "_data", "_view", "_private", "_sources", "_object", "_lock", "__weakref__")

    def __init__(
        self,
        layout: Layout,
        original: Any = _NOTHING,
        data: list[memoryview] | None = None,
        sources: tuple[str, ...] = (),
    ) -> None:
        self.layout = layout
        self._original = original
        self._data = data
        self._view: memoryview | None = None
        self._private = False  # no segment could be made: the buffers stay in this process
        self._sources = sources
        self._object = _NOTHING
        self._lock = threading.Lock()

    @classmethod
    def wrap(cls, value: Any, layout: Layout) -> HostShared:
        """``value`` with a layout computed from its pickle (``layout`` gives the other fields)."""
        parts = pickled_parts(value)
        buffers = [memoryview(b).cast("B") for b in parts[1:]]
        sizes = tuple(b.nbytes for b in buffers)
        layout = dataclasses.replace(layout, header=bytes(parts[0]), sizes=sizes)
        return cls(layout, original=value, data=buffers)

    def __repr__(self) -> str:
        return f"<HostShared {self.layout.key} {self._state()}>"

    def _state(self) -> str:
        if self._original is not _NOTHING:
            return "original"
        if self._view is not None:
            return "mapped"
        if self._private:
            return "private"
        return "received" if self._data is not None else "ticket"

    # --- what tasks get

    def object(self) -> Any:
        """The object: unpickled once per instance, its buffers mapped from shared memory."""
        if self._original is not _NOTHING:  # where the graph was built: the user's object
            return self._original
        with self._lock:
            if self._object is _NOTHING:
                self._resolve(pull=True)
                self._object = pickle.loads(self.layout.header, buffers=self._buffers())
                if self._view is not None:
                    count_segments_once()
            return self._object

    def taken(self) -> HostShared:
        """The value to store under the key: mapped now (pulled if need be), holding what this one held.

        This one, the task's spec, keeps only the ticket: workers keep a
        computed task's spec while results that depend on it are held, and
        the segment must go when the value under the key goes.  Where the
        graph was built (``original``), the very same object.
        """
        if self._original is not _NOTHING:
            return self
        value = HostShared(self.layout, sources=self._sources)
        with self._lock:
            value._data, self._data = self._data, None
            value._view, value._private = self._view, self._private
        with value._lock:
            value._resolve(pull=True)
        if value._view is not None:
            count_segments_once()
        return value

    def _resolve(self, pull: bool) -> None:
        """Under ``_lock``: from received buffers or a ticket to a mapping, or a private copy."""
        if self._view is not None or self._private:
            return
        layout = self.layout
        view = segments.attach(layout.digest, layout.nbytes)
        if view is None and self._data is not None:
            view = segments.create(layout.digest, layout.nbytes, layout.limit, self._write_data)
        elif view is None and pull:
            view = segments.create(
                layout.digest, layout.nbytes, layout.limit, lambda write: _pull(layout, self._sources, _at_offsets(layout, write))
            )
            if view is None:  # no room: a private copy, as with share="process"
                private = [bytearray(size) for size in layout.sizes]
                _pull(layout, self._sources, lambda index, start, data: _copy_into(private[index], start, data))
                self._data = [memoryview(b) for b in private]
        if view is not None:
            self._view = view  # before dropping the data: a concurrent reader always finds one
            self._data = None
        elif self._data is not None:
            self._private = True  # one attempt (and one DEBUG line) per instance

    def _write_data(self, write: segments.Writer) -> None:
        assert self._data is not None
        for offset, buffer in zip(self.layout.offsets, self._data):
            write(offset, buffer)

    def _buffers(self) -> list[memoryview]:
        view = self._view
        if view is not None:
            return [view[o : o + s] for o, s in zip(self.layout.offsets, self.layout.sizes)]
        return list(self._data or ())

    def chunk(self, index: int, start: int, stop: int) -> memoryview | None:
        """Bytes ``start:stop`` of buffer ``index``, if this process has them (serving a pull)."""
        buffers = self._buffers()  # no lock: it may be held for a whole pull
        if index >= len(buffers) or not 0 <= start <= stop <= self.layout.sizes[index]:
            return None
        return buffers[index][start:stop]

    def private_bytes(self) -> int:
        """Bytes this instance holds in process memory (not counting shared memory)."""
        held = 0 if self._view is not None else sum(self.layout.sizes) if self._data is not None else 0
        return len(self.layout.header) + held

    # --- how it travels

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        scheduler = _sending_scheduler(self)
        buffers = self._buffers()
        if scheduler is not None or len(buffers) != len(self.layout.sizes):
            # the scheduler sending the hoisted key's task: the worker pulls from it
            return from_ticket, (self.layout, (SCHEDULER,) if scheduler is not None else self._sources)
        if int(protocol) >= 5:
            return from_data, (self.layout, *(pickle.PickleBuffer(b) for b in buffers))
        return from_data, (self.layout, *(bytes(b) for b in buffers))

    def _ticket_sources(self, sender: str) -> tuple[str, ...] | None:
        """Sources for a ticket to a process on this host; None: send the buffers instead."""
        if self._original is not _NOTHING:
            return None
        if self._view is None and self._data is not None:
            with self._lock:
                self._resolve(pull=False)  # received buffers: into shared memory now, then a ticket
        if self._view is not None:
            return (sender, *self._sources)
        if self._data is None:  # a ticket ourselves: pass on where the bytes are
            return (sender, *self._sources)
        return None  # a private copy: no segment to point at


def from_data(layout: Layout, *buffers: Any) -> HostShared:
    """Unpickle a :class:`HostShared` that carries its buffers (mapped or copied when first used)."""
    return HostShared(layout, data=[memoryview(b).cast("B") for b in buffers])


def from_ticket(layout: Layout, sources: tuple[str, ...]) -> HostShared:
    """Unpickle a ticket: map the segment if this host has it, else pull the bytes when first used."""
    shared = HostShared(layout, sources=tuple(sources))
    view = segments.attach(layout.digest, layout.nbytes)
    if view is not None:
        shared._view = view
    return shared


def stored(shared: Any) -> Any:
    """The hoisted key's task: have the segment (or a private copy) ready; the value stored under the key."""
    return shared.taken() if isinstance(shared, HostShared) else shared


def unwrap(value: Any) -> Any:
    """What carrying tasks call instead of holding the object: the object itself."""
    return value.object() if isinstance(value, HostShared) else value


# --- for the routes: which hoists go to shared memory, and the nodes that do it


def host_key(key: str) -> str:
    """The key of a host-shared hoist: host- and process-shared values never share a key.

    >>> host_key("dedup-Mapper-8c1f")
    'dedup-host-Mapper-8c1f'
    """
    return "dedup-host-" + key.removeprefix("dedup-")


def shared_value(hoist: Hoist, settings: Settings) -> HostShared | None:
    """``hoist``'s object as a :class:`HostShared`, or None where process sharing applies.

    Only objects whose pickle (protocol 5) has at least ``share_min_bytes``
    of out-of-band buffers qualify: numpy arrays, numeric pandas columns,
    pyarrow buffers.  A pure-Python object would gain nothing.
    """
    fp = hoist.fingerprint
    if not all(c in "0123456789abcdef" for c in fp.digest):
        return None  # a hash collision told apart in this pass: its digest does not name one content
    layout = Layout(fp.digest, host_key(hoist.key), fp.label, b"", (), settings.share_limit)
    try:
        shared = HostShared.wrap(hoist.value, layout)
    except Exception as e:  # it pickled for the fingerprint: should not happen, never fatal
        logger.debug("share='host': %s stays per process: pickling failed (%s)", fp.label, e)
        return None
    total = sum(shared.layout.sizes)
    if total == 0 or total < settings.share_min_bytes:
        logger.debug(
            "share='host': %s stays per process: %s of out-of-band buffers (share-min-bytes %s)",
            fp.label,
            format_bytes(total),
            format_bytes(settings.share_min_bytes),
        )
        return None
    return shared


def placement(settings: Settings) -> Place:
    """For ``rewrite_graph(place=...)``: (the node under the host key, the node carrying tasks get)."""

    def place(hoist: Hoist) -> tuple[GraphNode, GraphNode] | None:
        shared = shared_value(hoist, settings)
        if shared is None:
            return None
        key = shared.layout.key
        return Task(key, stored, shared), Task(None, unwrap, TaskRef(key))

    return place


def scattered_hoists(hoists: Mapping[str, Hoist], settings: Settings) -> dict[str, Hoist]:
    """``hoists`` with each qualifying one to be scattered as a :class:`HostShared`, under its host key."""
    out = {}
    for digest, hoist in hoists.items():
        shared = shared_value(hoist, settings)
        out[digest] = hoist if shared is None else dataclasses.replace(hoist, key=shared.layout.key, value=shared)
    return out


def references(refs: Mapping[str, TaskRef], hoists: Mapping[str, Hoist]) -> dict[str, GraphNode]:
    """What carrying tasks hold: ``unwrap(ref)`` for host-shared hoists, the plain reference otherwise."""
    return {d: Task(None, unwrap, ref) if isinstance(hoists[d].value, HostShared) else ref for d, ref in refs.items()}


# --- pulling the bytes from another process


def _at_offsets(layout: Layout, write: segments.Writer) -> Callable[[int, int, Any], None]:
    offsets = layout.offsets
    return lambda index, start, data: write(offsets[index] + start, data)


def _copy_into(target: bytearray, start: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    target[start : start + view.nbytes] = view


def _pull(layout: Layout, sources: tuple[str, ...], write: Callable[[int, int, Any], None]) -> None:
    """Copy the buffers, chunk by chunk, from the first source that has all of them."""
    run, rpc_to, holders = _connection()
    failures = []
    tried: set[str] = set()
    began = time.perf_counter()
    for source in itertools.chain(sources, (SCHEDULER,), holders(layout.key)):
        if source in tried:
            continue
        tried.add(source)
        try:
            run(_pull_from, rpc_to(source), layout, write)
        except Exception as e:  # next source
            failures.append(f"{source}: {type(e).__name__}: {e}")
            continue
        logger.debug(
            "pulled %s (%s) from %s in %.2f s", layout.key, format_bytes(sum(layout.sizes)), source, time.perf_counter() - began
        )
        return
    raise SharedObjectUnavailable(
        f"dedupgraph: no process could provide the bytes of {layout.key} ({layout.label}, "
        f"{format_bytes(sum(layout.sizes))}), shared per host (share='host'), and this host has no "
        f"segment of it; tried {'; '.join(failures) or 'nothing'}"
    )


def chunk_size(total: int) -> int:
    """Bytes per pull request for an object of ``total`` bytes.

    >>> chunk_size(400 * 2**20) // 2**20, chunk_size(48 * 2**20) // 2**10, chunk_size(1000) // 2**10
    (4, 768, 256)
    """
    return max(MIN_CHUNK, min(CHUNK, total // 64))


async def _pull_from(rpc: Any, layout: Layout, write: Callable[[int, int, Any], None]) -> None:
    """Every chunk from one source, ``WINDOW`` requests in flight: round trips overlap."""
    window = asyncio.Semaphore(WINDOW)

    async def one(index: int, start: int, stop: int) -> None:
        async with window:
            call = getattr(rpc, HANDLER)(digest=layout.digest, index=index, start=start, stop=stop)
            reply = await asyncio.wait_for(call, _PULL_TIMEOUT)
            data = reply.get("data") if isinstance(reply, dict) and reply.get("status") == "OK" else None
            if data is None or memoryview(data).nbytes != stop - start:
                raise LookupError("does not hold it")
            write(index, start, data)  # a few ms of copying, in the event loop

    step = chunk_size(sum(layout.sizes))
    chunks = [(i, s, min(size, s + step)) for i, size in enumerate(layout.sizes) for s in range(0, size, step)]
    await asyncio.gather(*(one(*c) for c in chunks))


def _connection() -> tuple[Callable[..., Any], Callable[[str], Any], Callable[[str], Iterator[str]]]:
    """(run a coroutine function, an rpc to a source, the workers holding a key): through this worker or the default client."""
    from distributed import default_client, get_worker
    from distributed.utils import sync

    try:
        worker = get_worker()
        loop, pool, scheduler, me = worker.loop, worker.rpc, worker.scheduler, worker.address
    except ValueError:  # not in a task: a client unpickled a ticket
        client = default_client()
        loop, pool, scheduler, me = client.loop, client.rpc, client.scheduler, None

    def run(func: Callable[..., Any], *args: Any) -> Any:
        return sync(loop, func, *args)

    def rpc_to(source: str) -> Any:
        return scheduler if source == SCHEDULER else pool(source)

    def holders(key: str) -> Iterator[str]:
        who_has = sync(loop, scheduler.who_has, keys=[key], callback_timeout=_PULL_TIMEOUT)
        yield from (address for address in who_has.get(key, ()) if address != me)

    return run, rpc_to, holders


# --- serving the bytes, from servers (scheduler, workers) that sent tickets

_serving_lock = threading.Lock()
_serving: dict[str, weakref.WeakSet[HostShared]] = {}


SWEEPER = "dedupgraph-shared-memory-sweep"


def _serve(server: Any, shared: HostShared) -> None:
    """Let peers pull ``shared``'s bytes from ``server``'s process while ``shared`` lives."""
    server.handlers.setdefault(HANDLER, _serve_chunk)
    scheduler = sys.modules.get("distributed.scheduler")
    if scheduler is not None and isinstance(server, scheduler.Scheduler) and SWEEPER not in server.plugins:
        server.add_plugin(_sweeper(), name=SWEEPER)
    with _serving_lock:
        for digest in [d for d, held in _serving.items() if not held]:
            del _serving[digest]
        _serving.setdefault(shared.layout.digest, weakref.WeakSet()).add(shared)


def _sweeper() -> Any:
    """A scheduler plugin that removes, when the scheduler closes, the segments nobody maps.

    A cluster closes its workers first: one killed because it did not stop in
    time (or earlier, by SIGKILL) could not remove the segments it was the
    last to map.
    """
    from distributed.diagnostics.plugin import SchedulerPlugin

    class SweepOnClose(SchedulerPlugin):
        name = SWEEPER

        async def close(self) -> None:
            segments.sweep()

    return SweepOnClose()


def _serve_chunk(digest: str, index: int, start: int, stop: int) -> dict[str, Any]:
    """The RPC handler: one chunk of a buffer of a content this process holds."""
    from distributed.protocol import to_serialize

    with _serving_lock:
        held = list(_serving.get(digest, ()))
    for shared in held:
        data = shared.chunk(index, start, stop)
        if data is not None:
            return {"status": "OK", "data": to_serialize(data)}
    return {"status": "missing"}


def _servers() -> Iterator[Any]:
    """The distributed schedulers and workers of this process (without importing distributed)."""
    for module, name in (("distributed.scheduler", "Scheduler"), ("distributed.worker", "Worker")):
        if module in sys.modules:
            yield from list(getattr(sys.modules[module], name)._instances)


def _sending_scheduler(shared: HostShared) -> Any:
    """The scheduler of this process pickling ``shared`` as its own task's run_spec, if that is what happens."""
    if "distributed.scheduler" not in sys.modules:
        return None
    for scheduler in list(sys.modules["distributed.scheduler"].Scheduler._instances):
        task = scheduler.tasks.get(shared.layout.key)
        spec = getattr(task, "run_spec", None)
        # this very object: a copy the client pickles to the scheduler must carry its bytes
        if spec is not None and any(arg is shared for arg in getattr(spec, "args", ())):
            _serve(scheduler, shared)
            return scheduler
    return None


def _sending_server(context: Mapping[str, Any] | None) -> tuple[Any, str] | None:
    """(server, its address) when a server of this process sends to a process on the same host."""
    if not context:
        return None
    from distributed.comm.addressing import get_address_host_port

    try:
        sender = context["sender"]["address"]
        recipient = context["recipient"]["address"]
        host, port = get_address_host_port(sender)
        if get_address_host_port(recipient)[0] != host:
            return None  # another host: it needs the bytes
    except (KeyError, TypeError, ValueError):
        return None
    for server in _servers():
        try:
            if get_address_host_port(server.address)[1] == port:
                return server, sender
        except (TypeError, ValueError):
            continue
    return None


def _dask_serialize(shared: HostShared, context: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    sending = _sending_server(context)
    sources = shared._ticket_sources(sending[1]) if sending is not None else None
    if sending is not None and sources is not None:
        _serve(sending[0], shared)
        return {"ticket": True}, [pickle.dumps((shared.layout, sources))]
    buffers = shared._buffers()
    if len(buffers) != len(shared.layout.sizes):  # only a ticket here, and no peer on this host
        return {"ticket": True}, [pickle.dumps((shared.layout, shared._sources))]
    return {"ticket": False}, [pickle.dumps(shared.layout), *buffers]


def _dask_deserialize(header: Mapping[str, Any], frames: list[Any]) -> HostShared:
    if header["ticket"]:
        layout, sources = pickle.loads(frames[0])
        return from_ticket(layout, sources)
    return from_data(pickle.loads(frames[0]), *frames[1:])


def _register() -> None:
    from distributed.protocol import dask_deserialize, dask_serialize

    dask_serialize.register(HostShared)(_dask_serialize)
    dask_deserialize.register(HostShared)(_dask_deserialize)


_register()


@sizeof.register(HostShared)
def _sizeof(shared: HostShared) -> int:
    # what worker memory accounting should see: shared memory is not this process's
    return shared.private_bytes()


@normalize_token.register(HostShared)
def _token(shared: HostShared) -> tuple[str, str, str]:
    # by content: tokenizing must not pickle the buffers
    return ("dedupgraph.HostShared", shared.layout.digest, shared.layout.key)
