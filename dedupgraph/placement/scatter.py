"""Hoisted objects as scattered futures, sent to a cluster once per content.

>>> refs = scattered_references(client, plan.hoists, broadcast=True)  # doctest: +SKIP
>>> sorted(f.key for f in refs.values()) == sorted(h.key for h in plan.hoists.values())  # doctest: +SKIP
True

Each object is scattered under its content key (``dedup-<Label>-<digest>``),
so a key that is already in memory on the cluster is reused instead of being
sent again: first among this client's own futures (race-free under the
client's refcount lock), then among keys that other clients hold, adopted
only once the scheduler confirms they are still in memory.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, NoReturn

from dask._task_spec import Task, TaskRef
from dask.utils import format_bytes

from dedupgraph.core.plan import Hoist

if TYPE_CHECKING:
    from distributed import Client, Future

logger = logging.getLogger("dedupgraph")

# How long to wait for the scheduler's answer about a key.  An answer takes
# one round trip; only a claim on a key released between our look-up and the
# claim is never answered, and that key is then scattered afresh.
ANSWER_TIMEOUT = 5.0


class ScatteredObjectLost(RuntimeError):
    """A scattered hoisted object is gone from the cluster and cannot be recomputed."""


class ScatteredRef(TaskRef):
    """A task's reference to a scattered key that keeps its future alive.

    >>> ScatteredRef.__reduce__ is TaskRef.__reduce__  # pickles as a plain TaskRef
    True

    The tasks of array, bag and delayed graphs hold these, so the data lives
    exactly as long as any graph that needs it.  The future itself never
    travels: only the client's copy of a graph holds it (see ``HoldingLayer``
    for dask-expr graphs, which are not copied within one process).
    """

    __slots__ = ("future",)

    def __init__(self, future: Future) -> None:
        super().__init__(future.key)
        self.future = future

    def __dask_tokenize__(self) -> tuple[str, Any]:
        return ("TaskRef", self.key)


class HoldingLayer(dict):
    """A dask-expr ``FromGraph`` layer that also holds the futures its tasks reference.

    >>> layer = HoldingLayer({"a": 1}, refs=())
    >>> import pickle; type(pickle.loads(pickle.dumps(layer)))
    <class 'dict'>

    Tasks in dask-expr graphs reference scattered keys by plain ``TaskRef``:
    within one process, unpickling an expression returns the live one of the
    same name, so an in-process scheduler (``LocalCluster``) would run, and
    keep in its log of recent worker messages, the very task objects of the
    client, and with them the futures, long after the user dropped
    everything.  The expression's layer operand holds them instead: it lives
    exactly as long as the collection and every expression built on it, and
    the scheduler only ever copies its items.
    """

    __slots__ = ("refs",)

    def __init__(self, items: Mapping[Any, Any], refs: tuple[ScatteredRef, ...]) -> None:
        super().__init__(items)
        self.refs = refs

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def lost(key: str, label: str, nbytes: int, broadcast: bool) -> NoReturn:
    """The run_spec of a scattered key: runs only if every copy of the data was lost.

    >>> lost("dedup-list-00", "list", 10, False)
    Traceback (most recent call last):
    ...
    dedupgraph.placement.scatter.ScatteredObjectLost: dedupgraph: the scattered object dedup-list-00 ...
    """
    where = "every worker that held a copy" if broadcast else "the only worker that held it"
    raise ScatteredObjectLost(
        f"dedupgraph: the scattered object {key} ({label}, {format_bytes(nbytes)}) "
        f"that these tasks share was lost with {where} (a worker died or the "
        "cluster restarted); scattered data cannot be recomputed. To send it "
        "again, drop these results and call dedupgraph.deduplicate(...) again on "
        "the original collections; to survive this, pass client=False to hoist "
        "it into a graph key, which is recomputed when lost (broadcast=True only "
        "keeps copies on the workers that run tasks needing it)."
    )


def lost_object_task(hoist: Hoist, broadcast: bool) -> Task:
    """A graph entry for a scattered key, so that its loss fails with a clear error.

    The scheduler gives an already scattered key the run_spec of the first graph
    that contains it; without one, losing the data cancels every dependent with
    "lost dependencies" or "already forgotten".  With it, the key is "recomputed"
    by :func:`lost`, and every dependent fails with that message instead.
    """
    fp = hoist.fingerprint
    return Task(hoist.key, lost, hoist.key, fp.label, fp.nbytes, broadcast)


def scattered_references(client: Client, hoists: Mapping[str, Hoist], broadcast: bool) -> dict[str, ScatteredRef]:
    """digest -> a reference to the hoisted object scattered under its content key."""
    refs, lost_here = _held_by_client(client, hoists)
    if lost_here:
        # A lost key stays "erred" on the scheduler, and data scattered under it
        # later would not clear that: new tasks would fail at once.  Forget it
        # first (its dependents are failed already).
        client.cancel(lost_here, force=True, reason="dedupgraph: scattered object lost, sending it again")
    missing = {d: h for d, h in hoists.items() if d not in refs}
    if missing:
        refs.update(_adopted(client, missing))
    reused = len(refs)
    if broadcast and refs:
        # reused keys may sit on one worker; copies between workers cost the client nothing
        client.replicate(list(refs.values()))
    fresh = {d: h for d, h in hoists.items() if d not in refs}
    for _ in range(3):  # a second round is needed only after a release race, see _scattered
        todo = {d: h for d, h in fresh.items() if d not in refs}
        if not todo:
            break
        refs.update(_scattered(client, todo, broadcast))
    if len(refs) < len(hoists):
        raise RuntimeError(f"dedupgraph could not scatter {sorted(set(hoists) - set(refs))}")
    logger.info(
        "scattered %d object(s) (%s)%s, reused %d already on the cluster",
        len(fresh),
        format_bytes(sum(h.fingerprint.nbytes for h in fresh.values())),
        " to every worker" if broadcast else "",
        reused,
    )
    return {digest: ScatteredRef(future) for digest, future in refs.items()}


def _scattered(client: Client, hoists: Mapping[str, Hoist], broadcast: bool) -> dict[str, Future]:
    """Scatter, then keep only the keys the scheduler still holds once earlier releases are in.

    ``scatter`` travels by RPC, while the client sends releases on its ordered
    stream: the release of a key queued just before (the user dropped the
    last collection that used it) can reach the scheduler after the new data,
    and drop it.  A "report-key" sent on that stream now arrives after any such
    release, and the answer tells whether the key is still in memory.
    """
    data = {h.key: _whole(h.value) for h in hoists.values()}
    # A host-shared object goes from the client to one worker; copies between
    # workers of a host then carry a ticket, not the buffers (see dedupgraph.placement.host).
    host_shared = broadcast and any(_is_host_shared(v) for v in data.values())
    futures = client.scatter(data, broadcast=broadcast and not host_shared, hash=False)
    for key in futures:
        client.futures[key].reset()  # "finished" again only by the answer below
        client._send_to_scheduler({"op": "report-key", "key": key})
    _wait_for_answers(futures.values())
    done = {d: futures[h.key] for d, h in hoists.items() if futures[h.key].status == "finished"}
    if host_shared and done:
        client.replicate(list(done.values()))
    return done


def _is_host_shared(value: Any) -> bool:
    # only a module that is already imported can have made one
    module = sys.modules.get("dedupgraph.placement.host")
    return module is not None and isinstance(value, module.HostShared)


def _wait_for_answers(futures: Iterable[Future]) -> None:
    # polled: distributed.wait needs the default client, which this may not be
    pending = list(futures)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while pending and time.monotonic() < deadline:
        pending = [f for f in pending if not f.done()]
        if pending:
            time.sleep(0.002)


def _whole(value: Any) -> Any:
    """``value``, or its pickle if distributed would serialize it element by element.

    ``scatter`` serializes a list, tuple, set or dict item by item, which for a
    long list costs orders of magnitude more than one pickle (docs/benchmarks.rst,
    "Measurements behind the code").  The worker stores the unpickled object either way.
    """
    if type(value) not in (list, tuple, set, dict):
        return value
    from distributed.protocol import Serialized, serialize

    return Serialized(*serialize(value, serializers=("pickle",), on_error="raise"))


def _held_by_client(client: Client, hoists: Mapping[str, Hoist]) -> tuple[dict[str, Future], list[Future]]:
    """Futures of keys this client holds in memory, and of those it saw lost."""
    from distributed import Future

    # Under the refcount lock no other thread can drop this client's last
    # future of a key between our look-up and our own reference to it.
    with getattr(client, "_refcount_lock", None) or nullcontext():
        held, lost_here = {}, []
        for digest, hoist in hoists.items():
            state = client.futures.get(hoist.key)
            if state is not None and state.status == "finished":
                held[digest] = Future(hoist.key, client)
            elif state is not None and state.status in ("error", "lost"):
                lost_here.append(Future(hoist.key, client))
        return held, lost_here


def _adopted(client: Client, hoists: Mapping[str, Hoist]) -> dict[str, Future]:
    """Futures of keys that other clients hold in memory, claimed for this client."""
    from distributed import Future

    keys = [h.key for h in hoists.values()]
    who_has: dict[Any, Any] = client.sync(client.scheduler.who_has, keys=keys)
    present = {d: h for d, h in hoists.items() if who_has.get(h.key)}
    if not present:
        return {}
    claimed = {d: Future(h.key, client) for d, h in present.items()}
    # The scheduler answers a claim on a key in memory with "key-in-memory";
    # a key released meanwhile is never answered, and is scattered afresh
    # (dropping the unconfirmed claims queues their release before that
    # scatter, which _scattered checks for).
    client._send_to_scheduler({"op": "client-desires-keys", "keys": [h.key for h in present.values()], "client": client.id})
    _wait_for_answers(claimed.values())
    confirmed = {d: f for d, f in claimed.items() if f.status == "finished"}
    if len(confirmed) < len(claimed):
        logger.debug("released while being adopted, scattered again: %s", sorted(set(claimed) - set(confirmed)))
    return confirmed
