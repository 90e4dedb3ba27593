"""Acting on a client connection from outside its protocol layers.

Written against mitmproxy 11.0: events handed to a ConnectionHandler's ``server_event`` (how its
own ``inject`` commands work) and its ``on_timeout``; ``events.DataReceived`` and
``ConnectionClosed`` as its layers expect them.

mitmproxy has no API to answer a request it has already forwarded (an upstream that takes too
long): the gateway hands mitmproxy an event for the connection as if it had come from the
network, through the same event injection its own ``inject`` commands use. Closing a connection
that never sent a request goes the way mitmproxy closes idle ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import events

from ..answers import closing_answer_to
from .proxyserver import connection_handler

logger = logging.getLogger(__name__)

_injections: set[asyncio.Future[None]] = set()


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coroutine)
    _injections.add(task)  # the event loop keeps only a weak reference to a task
    task.add_done_callback(_injections.discard)


def inject(client: connection.Client, event: events.Event) -> bool:
    """Feed `event` to the protocol layers of `client`'s connection; False if it is gone."""
    handler = connection_handler(client)
    if handler is None:
        return False
    _run(handler.server_event(event))
    return True


def close_client(client: connection.Client) -> None:
    """Close `client`'s connection as mitmproxy closes an idle one (its inactivity timeout)."""
    handler = connection_handler(client)
    if handler is not None:
        _run(handler.on_timeout())


def answer_as_upstream(flow: http.HTTPFlow, status: int, message: str) -> int | None:
    """Answer a forwarded request in its upstream's place, closing the upstream connection so
    that whatever the upstream sends later is never read. The status the client gets, or None
    when this cannot be done: the connection is not open yet, or is HTTP/2 (one stream of several).

    Over plain HTTP/1 the answer is handed to mitmproxy as the upstream's, with ``Connection:
    close``. Under TLS, bytes handed in would be taken for ciphertext: the upstream connection is
    ended instead, which mitmproxy answers with 502.
    """
    server = flow.server_conn
    if not server.connected or server.alpn == b"h2":
        return None
    if server.tls:
        return 502 if inject(flow.client_conn, events.ConnectionClosed(server)) else None
    response = http1.assemble_response(closing_answer_to(flow, status, message))
    return status if inject(flow.client_conn, events.DataReceived(server, response)) else None
