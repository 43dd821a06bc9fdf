"""The client side of the distributed route: a client preload that checks the cluster, and the settings each graph carries.

>>> # DASK_DISTRIBUTED__CLIENT__PRELOAD='["dedupgraph.preload"]' python analysis.py

**Checked at connect time.** On distributed the scheduler unpickles the
pass with each graph, and workers run the functions that placement pickles
into tasks (see ``docs/how-it-works.rst``, "Names in graphs"), so a
scheduler or worker without this very dedupgraph would fail computations.
:func:`dask_setup` therefore asks the scheduler, and the workers connected
now, which dedupgraph they run; if one cannot import it, or runs another
version, it warns once with the fix and leaves the pass off in this process.

**The settings travel with each graph.** The same question tells whether
the scheduler runs the scheduler route (``dedupgraph.scheduler``). If it
does, each graph this client submits carries the settings in force here
(:func:`attach`), which then govern it on the scheduler, DataFrames
included. If it does not, the scheduler gets the once-per-process hint for
the graphs of every client (``dedupgraph.tools.hint``), and this process
logs one INFO line.

The settings are read from this process's ``dask.config`` when a graph is
sent (so ``with dedupgraph.enable(...)`` and ``dask.config.set(...)`` around
``persist`` apply, even after the block has ended by the time the scheduler
materializes the graph) and added to the ``update-graph`` message
(``dedupgraph.routes.distributed.wire``), which the route takes them out of.
A scheduler without the route would refuse a message with an unknown field,
and close the client's connection: they are only added on the connection
where the scheduler confirmed the route. After a reconnection (the
scheduler restarted, maybe without the route) none are added until the new
scheduler has confirmed it again.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import dask.config

from dedupgraph.core.optimizers import dask_optimizer
from dedupgraph.once import Once
from dedupgraph.routes.activation import OPTIMIZER_KEYS, switch_on
from dedupgraph.routes.config import INVALID_OUTCOME, Deduplicator
from dedupgraph.routes.distributed.uploads import OFFER_OP, RESERVE_OP, Offer, Prepickled, pickle_sparing
from dedupgraph.routes.distributed.wire import FIELD, PLAIN, to_wire
from dedupgraph.settings import Settings, warn_invalid
from dedupgraph.version import __version__

if TYPE_CHECKING:
    from distributed import Client, Scheduler

logger = logging.getLogger("dedupgraph")

# Each said once per process: a notebook that creates a Client per cell must
# not repeat the same paragraph.
_problem_told = Once()
_no_route_told = Once()

# client -> whether its scheduler imports dedupgraph; weak, so it holds no
# client alive and holds at most the clients that exist.
_checked: weakref.WeakKeyDictionary[Client, bool] = weakref.WeakKeyDictionary()

# A scheduler that does not answer a reservation within this long gets the
# objects instead: the graph must not wait on a saving.
RESERVE_TIMEOUT_S = 30


async def dask_setup(client: Client) -> None:
    """Run by distributed for every new Client when this module is a client preload."""
    found = await scheduler_status(client)
    _checked[client] = not isinstance(found, str)
    if not isinstance(found, str):
        found = await workers_problem(client) or found
    if isinstance(found, str):
        switch_off()
        warn_once(found)
        return
    try:
        switch_on()  # an optimizer of the user's own stays
    except ValueError as e:  # a setting made invalid since: the Client must start all the same
        warn_invalid(e, INVALID_OUTCOME)
    if found.get("route"):
        attach(client, scheduler_route_on)
    else:
        _tell_once(client)


def _tell_once(client: Client) -> None:
    if _no_route_told():
        logger.info(
            "dedupgraph: the scheduler at %s does not run the scheduler route: only arrays, delayed "
            "values and bags are deduplicated, not DataFrames. Set DASK_DEDUPGRAPH__ENABLED=True in "
            "the scheduler's environment too (or start it with --preload dedupgraph.scheduler).",
            client.scheduler.address,
        )


def switch_off() -> None:
    """Like ``dedupgraph.disable()``, but with nothing of dedupgraph left in the config.

    ``disable()`` puts back the bases the passes wrap, which are dedupgraph
    functions too: a scheduler that cannot import dedupgraph could not
    unpickle a graph that carries them.  Here each key gets dask's own
    optimizer instead.
    """
    restored = {}
    for key in OPTIMIZER_KEYS:
        current = dask.config.get(key, None)
        if isinstance(current, Deduplicator) or getattr(current, "__module__", "").startswith("dedupgraph"):
            restored[key] = dask_optimizer(key.removesuffix("_optimize"))
    dask.config.set(restored)


def forget(client: Client | None = None) -> dict[str, int]:
    """Let go of every object the scheduler keeps for reuse by later computations.

    >>> dedupgraph.forget(client)  # doctest: +SKIP
    {'objects': 2, 'bytes': 482112}

    ``client``: the scheduler's client; None for the default one.  Returns
    how many objects were kept and their pickled bytes.  Keys still used by a
    running computation stay until it ends, as any key does.  A scheduler
    without the scheduler route keeps nothing: nothing to let go.
    """
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            raise ValueError("dedupgraph.forget(client=None) needs a distributed Client: pass one, or create one first") from None
    if not scheduler_imports_dedupgraph(client):
        return {"objects": 0, "bytes": 0}
    from dedupgraph.routes.distributed.plugin import forget_kept

    return client.run_on_scheduler(forget_kept)


def scheduler_imports_dedupgraph(client: Client) -> bool:
    """Whether ``client``'s scheduler can import dedupgraph; asked once per client."""
    known = _checked.get(client)
    if known is None:
        known = _checked[client] = client.sync(scheduler_problem, client) is None
    return known


async def scheduler_problem(client: Client) -> str | None:
    """None if the scheduler imports dedupgraph, else what goes wrong, with the fix."""
    found = await scheduler_status(client)
    return found if isinstance(found, str) else None


async def scheduler_route_on(client: Client) -> bool:
    """Whether ``client``'s scheduler runs the scheduler route."""
    found = await scheduler_status(client)
    return not isinstance(found, str) and bool(found.get("route"))


async def scheduler_status(client: Client, observe: bool = True) -> dict[str, Any] | str:
    """What the scheduler says of dedupgraph there (``dedupgraph.routes.distributed.plugin.status``), or the problem, with the fix.

    ``observe``: a scheduler without the route gets the hint (see ``dedupgraph.tools.hint``).
    """
    from distributed.protocol.pickle import dumps

    theirs = await scheduler_version(client)
    if theirs != __version__:
        return _fix(client, theirs)
    try:
        # unpickling the probe, by reference, imports dedupgraph on the scheduler
        response = await client.scheduler.run_function(
            function=dumps(probe), args=dumps(()), kwargs=dumps({"observe": observe}), wait=True
        )
    except Exception as e:  # the unpickling error comes back raised
        return _fix(client, None, f"{type(e).__name__}: {e}")
    if response.get("status") != "OK":
        return _fix(client, None, repr(response.get("exception", response)))
    found = response.get("result")
    return found if isinstance(found, dict) else _fix(client, None, f"its status reads {found!r}")


# Read with ``pydoc.locate``, a function of the standard library: asking needs
# no name of dedupgraph's to unpickle there, so any version, or none, answers.
VERSION = "dedupgraph.version.__version__"


async def scheduler_version(client: Client) -> str | None:
    """The dedupgraph version ``client``'s scheduler runs; None if it cannot import dedupgraph."""
    from pydoc import locate

    from distributed.protocol.pickle import dumps

    try:
        response = await client.scheduler.run_function(function=dumps(locate), args=dumps((VERSION,)), kwargs=dumps({}), wait=True)
    except Exception:  # noqa: BLE001  (told as "cannot import" by the caller)
        logger.debug("dedupgraph: could not ask the scheduler for its version", exc_info=True)
        return None
    found = response.get("result") if response.get("status") == "OK" else None
    return found if isinstance(found, str) else None


async def worker_versions(client: Client) -> dict[str, str | None]:
    """Each connected worker's address -> the dedupgraph version it runs, None where it cannot import dedupgraph."""
    from pydoc import locate

    from distributed.protocol.pickle import dumps

    message = {"op": "run", "function": dumps(locate), "args": dumps((VERSION,)), "kwargs": dumps({}), "wait": True}
    responses = await client.scheduler.broadcast(msg=message, on_error="return_pickle")
    found: dict[str, str | None] = {}
    for address, response in responses.items():
        version = response.get("result") if isinstance(response, dict) and response.get("status") == "OK" else None
        found[address] = version if isinstance(version, str) else None
    return found


async def workers_problem(client: Client) -> str | None:
    """None if every worker connected now runs this dedupgraph, else which do not, with the fix.

    Workers run the functions that placement pickles into tasks: a worker
    without them would fail those tasks. Workers that join later are not
    asked (see ``docs/deployments.rst``).
    """
    try:
        versions = await worker_versions(client)
    except Exception:  # noqa: BLE001  (the scheduler answered already: not worth failing the Client)
        logger.debug("dedupgraph: could not ask the workers for their version", exc_info=True)
        return None
    wrong = {address: version for address, version in versions.items() if version != __version__}
    if not wrong:
        return None
    shown = ", ".join(f"{address} ({version or 'none'})" for address, version in sorted(wrong.items())[:5])
    more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
    return (
        f"dedupgraph: {len(wrong)} of {len(versions)} workers of the scheduler at {client.scheduler.address} "
        f"do not run dedupgraph {__version__}: {shown}{more}. The pass stays off in this process: "
        "workers run the functions dedupgraph puts into tasks, and would fail them. "
        f"Fix: install dedupgraph {__version__} in the workers' environment too, as in the scheduler's."
    )


def probe(dask_scheduler: Scheduler | None = None, observe: bool = True) -> dict[str, Any]:
    """Runs on the scheduler: its status; where the route is off, it gets the hint instead."""
    from dedupgraph.routes.distributed import plugin

    if dask_scheduler is None:
        return {"version": __version__, "route": False}
    found = plugin.status(dask_scheduler)
    if observe and not found["route"]:
        plugin.observe(dask_scheduler)
    return found


def _fix(client: Client, theirs: str | None, error: str = "") -> str:
    where = f"the scheduler at {client.scheduler.address}"
    if theirs is not None:
        what = f"{where} runs dedupgraph {theirs}, this process {__version__}"
        why = "the names a graph refers to differ between versions: computations would fail"
    else:
        what = f"{where} cannot import dedupgraph" + (f" ({error})" if error else "")
        why = "would fail every computation"
    return (
        f"dedupgraph: {what}, so the pass stays off in this process: the "
        f"scheduler unpickles the pass with every graph, and {why}. "
        f"Fix: install dedupgraph {__version__} in the "
        "scheduler's environment too (and the workers'), e.g. in the image the "
        f"scheduler runs, or with EXTRA_PIP_PACKAGES=dedupgraph=={__version__}."
    )


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time in this process only."""
    if _problem_told():
        warnings.warn(message, RuntimeWarning, stacklevel=2)


# --- the settings each graph carries, on a connection whose scheduler runs the route

#: ``confirm(client) -> whether its scheduler runs the route``, asked again after a reconnection
Confirm = Callable[["Client"], Awaitable[bool]]


def attach(client: Client, confirm: Confirm) -> bool:
    """Add the settings in force to each graph ``client`` sends; False if this distributed has no place for it."""
    current = client.__dict__.get("_send_to_scheduler")
    if isinstance(current, _SettingsCarrier):
        current.confirmed = client.scheduler_comm
        return True
    send = getattr(type(client), "_send_to_scheduler", None)
    if not callable(send):
        logger.debug("dedupgraph: Client._send_to_scheduler is missing; the scheduler's own settings apply")
        return False
    carrier = _SettingsCarrier(client, send, confirm)
    client._send_to_scheduler = carrier  # type: ignore[method-assign]
    _spare_kept_objects(client, carrier)
    return True


def _spare_kept_objects(client: Client, carrier: _SettingsCarrier) -> None:
    # graphs leave out what the scheduler keeps, once it has said what (see uploads)
    to_futures = getattr(type(client), "_graph_to_futures", None)
    handlers = getattr(client, "_stream_handlers", None)
    if not callable(to_futures) or not isinstance(handlers, dict):
        logger.debug("dedupgraph: this Client has no place to leave kept objects out; they travel")
        return
    uploads = _Uploads(client, to_futures, carrier)
    handlers[OFFER_OP] = uploads.told
    client._graph_to_futures = uploads  # type: ignore[method-assign]


def attached(client: Client) -> bool:
    """Whether graphs of ``client`` carry the settings (on its current connection)."""
    current = client.__dict__.get("_send_to_scheduler")
    return isinstance(current, _SettingsCarrier) and current.confirmed is client.scheduler_comm


class _SettingsCarrier:
    """Stands in for one client's ``_send_to_scheduler``."""

    def __init__(self, client: Client, send: Callable[[Any, dict[str, Any]], None], confirm: Confirm) -> None:
        self._client = weakref.ref(client)
        self._send = send  # the class's function: no reference from here to the client
        self._confirm = confirm
        self.confirmed: Any = client.scheduler_comm  # the connection whose scheduler runs the route
        self._asked: Any = None  # the connection a confirmation was last asked for

    def __call__(self, msg: dict[str, Any]) -> None:
        client = self._client()
        if client is None:
            return
        if msg.get("op") == "update-graph":
            comm = client.scheduler_comm
            if comm is self.confirmed:
                msg = {**msg, FIELD: _settings_here()}
            elif comm is not None and comm is not self._asked:
                self._asked = comm
                client.loop.add_callback(self._reconfirm, comm)
        self._send(client, msg)

    async def _reconfirm(self, comm: Any) -> None:
        client = self._client()
        if client is None:
            return
        try:
            if await self._confirm(client) and client.scheduler_comm is comm:
                self.confirmed = comm
        except Exception:  # the scheduler's settings apply meanwhile: nothing to fail
            logger.debug("dedupgraph: could not ask the new scheduler about its route", exc_info=True)


def _settings_here() -> dict[str, Any]:
    # invalid settings here send PLAIN, with one warning per setting: the graph runs as plain dask
    try:
        return to_wire(Settings.from_config())
    except ValueError as e:
        warn_invalid(e, INVALID_OUTCOME)
        return dict(PLAIN)


class _Uploads:
    """Stands in for one client's ``_graph_to_futures``: leaves out of each graph what the scheduler keeps.

    Not on the client's event loop (an asynchronous client): reserving needs
    an answer from the scheduler before the graph goes, so there the objects
    travel, and the scheduler still finds them kept (no worker unpickles them
    again).
    """

    def __init__(self, client: Client, to_futures: Callable[..., Any], carrier: _SettingsCarrier) -> None:
        self._client = weakref.ref(client)
        self._to_futures = to_futures  # the class's function: no reference from here to the client
        self._carrier = carrier
        self.offer = Offer()
        self._offered_on: Any = None  # the connection the offer came on: never another scheduler's

    def told(self, objects: list[list[str]]) -> None:
        """The scheduler's message (on the client's event loop): what it keeps now."""
        client = self._client()
        self._offered_on = None if client is None else client.scheduler_comm
        self.offer.told(objects)

    def __call__(self, expr: Any, *args: Any, **kwargs: Any) -> Any:
        client = self._client()
        if (
            client is not None and self.offer.kept and not client.asynchronous
            and self._offered_on is client.scheduler_comm
            and self._carrier.confirmed is client.scheduler_comm  # the scheduler runs the route
        ):
            expr = self._spared(client, expr)
        return self._to_futures(client, expr, *args, **kwargs)

    def _spared(self, client: Client, expr: Any) -> Any:
        try:
            if not Settings.from_config().reuse_limit:
                return expr
        except ValueError:  # told by the settings carrier; the graph runs as plain dask
            return expr
        try:
            pickled = pickle_sparing(expr, self.offer.kept)
            if not pickled.spared:
                return Prepickled(None, pickled)
            answer = client.sync(reserve, client, sorted(pickled.spared), callback_timeout=RESERVE_TIMEOUT_S)
            found = set(answer["found"])
            if len(found) < len(pickled.spared):  # again, sparing only what is reserved (token None: nothing)
                self.offer.missing(pickled.spared - found)
                pickled = pickle_sparing(expr, {described: keys & found for described, keys in self.offer.kept.items()})
            logger.debug("dedupgraph: left %d kept object(s) out of the graph", len(pickled.spared))
            return Prepickled(answer["token"], pickled)
        except Exception:  # the graph goes as it is: the objects travel
            logger.debug("dedupgraph: could not leave kept objects out of the graph", exc_info=True)
            return expr


async def reserve(client: Client, keys: list[str]) -> dict[str, Any]:
    """Ask ``client``'s scheduler to hold the kept objects of ``keys`` for the graph it sends next: its answer."""
    return await getattr(client.scheduler, RESERVE_OP)(client=client.id, keys=keys)
