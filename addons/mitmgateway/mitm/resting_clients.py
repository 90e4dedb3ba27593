"""Idle client connections set aside down to their socket, and served afresh when the client sends.

mitmproxy keeps a whole ConnectionHandler for each client connection as long as it is open: its
tasks, its layers, a stream reader and writer, the connection objects, some 25 KB of Python
objects for a keep-alive client that sends nothing. A plain-HTTP/1 client between two requests
needs none of it: mitmproxy's layers keep nothing from one exchange to the next. `set_aside` ends
such a handler without closing the client's socket (its layers see the client leave, as when it
closes between requests) and keeps a duplicate of the socket's descriptor; `serve_again` gives
that socket to the listener that accepted it, as a new connection, once the client sends. What
the client sends stays in the kernel until then: nothing of it is read before a new handler reads
it from its first byte, so nothing is lost and nothing passes unparsed.

Written against mitmproxy 11.0.2: ``proxy/server.py`` (``ConnectionHandler.transports``,
``timeout_watchdog``, ``wakeup_timer``, ``hook_tasks``, and ``handle_connection`` closing
``transports[client].writer`` when its reading task is cancelled), ``proxy/mode_servers.py``
(``ServerInstance.handle_stream``, called as ``asyncio.start_server`` calls it),
``proxy/layers/http`` (``HttpLayer.streams``, ``waiting_for_establishment`` and ``connections``;
``Http1Server``'s state between exchanges, what ``Http1Connection.mark_done`` resets) and
``proxy/layer.py`` (``Layer._paused``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy.layers.http import _http1

from .proxyserver import listener_of
from .sockets import ReleasedWriter, between_exchanges, http_layer_of


@dataclass(slots=True, eq=False)
class RestingClient:
    """An idle client connection reduced to its socket and the listener that accepted it."""

    socket: socket.socket
    listener: Any
    """mitmproxy's ServerInstance: it serves the client again even once it stopped listening."""
    idle_since: float
    """When the connection last saw activity, on mitmproxy's watchdog clock (time.time())."""
    descriptor: int = -1
    """The socket's, as the selector knows it (a closed socket's fileno() is -1)."""

    def __post_init__(self) -> None:
        self.descriptor = self.socket.fileno()

    def close(self) -> None:
        self.socket.close()


def _layers_settled(handler: Any, http_layer: Any) -> bool:
    """No layer from the top to the HTTP layer waits on a command's answer."""
    layer = handler.layer
    while layer is not None:
        if getattr(layer, "_paused", None) is not None:
            return False
        if layer is http_layer:
            return True
        layer = getattr(layer, "child_layer", None) or getattr(layer, "layer", None)
    return False


def set_aside(handler: Any, rested: Callable[[RestingClient], None]) -> bool:
    """End `handler` and keep its client's socket, if the client is a plain HTTP/1 connection
    between requests with nothing unread, unsent or pending; False otherwise. `rested` gets the
    socket once the handler's reading task has ended (it closes the handler's own descriptor)."""
    client: connection.Client = handler.client
    if client.tls or client.transport_protocol != "tcp":
        return False
    if client.state is not connection.ConnectionState.OPEN:
        return False
    if handler.timeout_watchdog.blocker or handler.wakeup_timer or handler.hook_tasks:
        return False  # a hook is running, or a layer waits for a timer
    io = handler.transports.get(client)
    if (
        io is None
        or io.handler is None
        or io.handler.done()
        or not isinstance(io.writer, asyncio.StreamWriter)
        or not isinstance(io.reader, asyncio.StreamReader)
        or io.reader._buffer  # asyncio's StreamReader: bytes read and not yet handed on
    ):
        return False
    transport = io.writer.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        return False  # an answer is still on its way out
    http_layer = http_layer_of(handler.layer)
    if (
        http_layer is None
        or http_layer.streams
        or http_layer.waiting_for_establishment
        or not _layers_settled(handler, http_layer)
        or not isinstance(server_side := http_layer.connections.get(client), _http1.Http1Server)
        or not between_exchanges(server_side)
    ):
        return False
    listener = listener_of(client)
    raw = transport.get_extra_info("socket")
    if listener is None or raw is None:
        return False
    # From here on the kernel keeps whatever the client sends: the handler reads nothing more.
    transport.pause_reading()
    try:
        duplicate = raw.dup()
    except OSError:
        transport.resume_reading()
        return False
    duplicate.setblocking(False)
    resting = RestingClient(duplicate, listener, handler.timeout_watchdog.last_activity)
    own_writer = io.writer
    io.writer = ReleasedWriter(own_writer)

    def ended(_task: Any) -> None:
        # Closing the handler's descriptor sends nothing: the duplicate keeps the connection.
        try:
            own_writer.close()
            rested(resting)
        except Exception:
            resting.close()  # the client sees its connection close, as on any idle close
            raise

    io.handler.add_done_callback(ended)
    io.handler.cancel("set aside while idle")
    return True


async def serve_again(resting: RestingClient) -> None:
    """Give a resting client's socket to its listener, as a freshly accepted connection."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)  # asyncio.start_server's default limit, as mitmproxy's
    # As asyncio.start_server does for each connection it accepts: the protocol starts the
    # listener's handle_stream in its own task and keeps it.
    protocol = asyncio.StreamReaderProtocol(reader, resting.listener.handle_stream, loop=loop)
    try:
        await loop.connect_accepted_socket(lambda: protocol, resting.socket)
    except OSError:
        resting.close()
