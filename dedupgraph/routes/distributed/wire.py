"""The client's settings, as they travel with each graph to the scheduler route.

>>> sent = to_wire(Settings(min_bytes=1024, exclude=("mypackage.Model",)))
>>> sent["min_bytes"], sent["exclude"]
(1024, ['mypackage.Model'])
>>> from_wire(sent).exclude
('mypackage.Model',)

A client whose scheduler runs the route (``dedupgraph.scheduler``) adds its
settings, as read from its own ``dask.config`` when it submits a graph, to the
``update-graph`` message under :data:`FIELD`; the route takes them out again
before distributed sees the message.  Plain values only (numbers, booleans,
strings, lists, ``None``): the message is msgpack-encoded, and the scheduler
never unpickles anything for them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from dedupgraph.settings import Settings

logger = logging.getLogger("dedupgraph")

#: the ``update-graph`` message field that carries the client's settings
FIELD = "dedupgraph_settings"
#: sent in :data:`FIELD` instead of settings when the client's are invalid: the graph runs as plain dask
PLAIN = {"plain-dask": True}

_FIELDS = frozenset(field.name for field in dataclasses.fields(Settings))


def to_wire(settings: Settings) -> dict[str, Any]:
    """``settings`` as a plain mapping of Python field names to msgpack-able values."""
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(settings).items()
    }


def wants_plain(values: Any) -> bool:
    """Whether a client sent :data:`PLAIN`: no pass on its graph, whatever the scheduler's own settings say.

    >>> wants_plain(PLAIN), wants_plain(to_wire(Settings()))
    (True, False)
    """
    return isinstance(values, Mapping) and values.get("plain-dask") is True


def from_wire(values: Mapping[str, Any]) -> Settings:
    """The settings a client sent, validated here; ``ValueError`` names a bad one.

    Fields this dedupgraph does not know (a newer client) are left out, and
    fields the client did not send (an older one) come from this process's
    config: the install-the-same-version rule is not checked per graph.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"dedupgraph settings from the client must be a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        logger.debug("dedupgraph: settings unknown to this version ignored: %s", ", ".join(map(str, unknown)))
    return Settings.from_config(**{k: v for k, v in values.items() if k in _FIELDS})
