"""Answering a request mitmproxy has already forwarded, and waking a connection up.

mitmproxy has no API to answer a request once it went upstream (an upstream timeout, a streamed
upload over its size limit), nor a timer that fires inside a connection's protocol layers. Both
are done by handing mitmproxy an event for the connection as if it had come from the network,
through the same event injection its own ``inject`` commands use.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection, ctx, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import events

from .answers import closing_answer

logger = logging.getLogger(__name__)

_injections: set[asyncio.Future[None]] = set()


def inject(client: connection.Client, event: events.Event) -> bool:
    """Feed `event` to the protocol layers of `client`'s connection; False if it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(client.id)
    if handler is None:
        return False
    injection = asyncio.ensure_future(handler.server_event(event))
    _injections.add(injection)  # the event loop keeps only a weak reference to a task
    injection.add_done_callback(_injections.discard)
    return True


def answer_as_upstream(flow: http.HTTPFlow, status: int, message: str) -> bool:
    """Answer a forwarded request as if its upstream had, and close the upstream connection.

    The answer carries ``Connection: close``, so mitmproxy also closes the upstream connection
    and whatever the upstream sends later is never read. False when this cannot be done: the
    upstream connection is not open yet, or is HTTP/2 (one stream of several).
    """
    server = flow.server_conn
    if not server.connected or server.alpn == b"h2":
        return False
    response = http1.assemble_response(closing_answer(flow, status, message))
    return inject(flow.client_conn, events.DataReceived(server, response))
