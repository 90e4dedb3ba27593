"""Requests and responses made again from the state the gateway took of live ones, without
mitmproxy's debug-mode type check.

Written against mitmproxy 11.0: `http.Request.from_state` (and Response's) builds its
`RequestData` through the dataclass constructor, whose ``__post_init__`` checks every field
against its annotation whenever ``__debug__`` is on (which is how mitmproxy runs), and `Headers`
checks every field again: together a third of what a shadow config's decision costs. A state
`get_state` just took from a live message needs neither check, so this sets the same attributes
those constructors would.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mitmproxy import http

M = TypeVar("M", http.Request, http.Response)
_DATA: dict[type, type] = {http.Request: http.RequestData, http.Response: http.ResponseData}


def _headers(fields: Any) -> http.Headers:
    headers = object.__new__(http.Headers)
    headers.fields = fields if isinstance(fields, tuple) else tuple(tuple(f) for f in fields)
    return headers


def from_live_state(cls: type[M], state: dict[str, Any]) -> M:
    """``cls.from_state(state)`` for a state taken from a live message by ``get_state()``."""
    data = object.__new__(_DATA[cls])
    vars(data).update(state)
    data.headers = _headers(state["headers"])
    if state["trailers"] is not None:
        data.trailers = _headers(state["trailers"])
    message = object.__new__(cls)
    message.data = data
    return message
