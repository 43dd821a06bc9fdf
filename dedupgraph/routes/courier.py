"""The client side of the scheduler route: each graph carries the settings in force when it is submitted.

>>> # done by dedupgraph.preload for each new Client whose scheduler runs the route:
>>> # attach(client); with dedupgraph.enable(exclude=["mypackage.Model"]): client.persist(df)

The settings are read from this process's ``dask.config`` when the graph is
sent (so ``with dedupgraph.enable(...)`` and ``dask.config.set(...)`` around
``persist`` apply, even after the block has ended by the time the scheduler
materializes the graph) and added to the ``update-graph`` message
(``dedupgraph.routes.wire``), which the route takes them out of.  Invalid
settings here send ``wire.PLAIN`` instead, with one warning per setting: the
graph then runs as plain dask, whatever the scheduler's own settings.

A scheduler without the route would refuse a message with an unknown field,
and close the client's connection: they are only added on the connection
where the scheduler confirmed the route.  After a reconnection (the
scheduler restarted, maybe without the route) none are added until the new
scheduler has confirmed it again.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dedupgraph.settings import Settings, warn_invalid
from dedupgraph.routes.config import INVALID_OUTCOME
from dedupgraph.routes.wire import FIELD, PLAIN, to_wire

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger("dedupgraph")

#: ``confirm(client) -> whether its scheduler runs the route``, asked again after a reconnection
Confirm = Callable[["Client"], Awaitable[bool]]

def attach(client: Client, confirm: Confirm) -> bool:
    """Add the settings in force to each graph ``client`` sends; False if this distributed has no place for it."""
    current = client.__dict__.get("_send_to_scheduler")
    if isinstance(current, _Courier):
        current.confirmed = client.scheduler_comm
        return True
    send = getattr(type(client), "_send_to_scheduler", None)
    if not callable(send):
        logger.debug("dedupgraph: Client._send_to_scheduler is missing; the scheduler's own settings apply")
        return False
    client._send_to_scheduler = _Courier(client, send, confirm)  # type: ignore[method-assign]
    return True


def attached(client: Client) -> bool:
    """Whether graphs of ``client`` carry the settings (on its current connection)."""
    current = client.__dict__.get("_send_to_scheduler")
    return isinstance(current, _Courier) and current.confirmed is client.scheduler_comm


class _Courier:
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
    try:
        return to_wire(Settings.from_config())
    except ValueError as e:
        warn_invalid(e, INVALID_OUTCOME)
        return dict(PLAIN)
