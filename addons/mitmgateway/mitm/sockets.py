"""Upstream sockets handed from one client connection to another.

mitmproxy gives each client connection its own upstream connections: its layers (the HTTP/1
client's state) and the task reading the socket belong to that client's ConnectionHandler. What
can pass between clients is the socket underneath, at a message boundary: `detach` takes an idle
plain-HTTP/1 upstream socket away from its client's handler (its layers see the connection close,
as when an upstream closes an idle one), and `deliver` gives it to the next connection mitmproxy
opens to the same address in the current task, in place of a new one (its layers start afresh on
it: the TLS-less, proxy-less stack mitmproxy builds for any new connection).

Written against mitmproxy 11.0.2's ``proxy/server.py``: ``ConnectionHandler.open_connection``
opens through the module's ``asyncio.open_connection`` in the task that then serves the
connection (and runs the server_connect hook first, where `deliver` is called);
``handle_connection`` closes ``transports[connection].writer`` when its reading task is cancelled;
``proxy/layers/http``: ``HttpLayer.connections``, ``HttpClient.child_layer`` and
``Http1Client``'s state between exchanges (what ``Http1Connection.mark_done`` resets).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import server as mitmproxy_server
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

from .patches import Patches
from .proxyserver import connection_handler

Address = tuple[str, int]


@dataclass(eq=False)
class ParkedSocket:
    """An upstream socket between two clients: nothing in flight on it, nothing unread."""

    address: Address
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = field(default_factory=time.monotonic)
    """When its last exchange ended: the upstream's own keep-alive timeout runs from there."""

    def usable(self) -> bool:
        """Still open both ways, nothing sent by the upstream since its last response (a byte
        here would be read as the next client's response), and no task left reading it."""
        return self.clean() and self.reader._waiter is None  # asyncio's StreamReader: its reader

    def clean(self) -> bool:
        return not (
            self.writer.is_closing()
            or self.reader.at_eof()
            or self.reader.exception() is not None
            or self.reader._buffer  # asyncio's StreamReader: its unread bytes
        )

    def close(self) -> None:
        self.writer.close()


class ReleasedWriter:
    """What mitmproxy's handler holds for a connection whose socket went elsewhere (another client's
    handler, or a client's rest: mitm/resting_clients.py): its ``handle_connection`` closes this
    instead of the socket, and nothing is written through it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def is_closing(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)


def http_layer_of(root: Any) -> Any:
    """The HttpLayer in a client's layer tree, or None."""
    layer = root
    while layer is not None and not isinstance(layer, http_layers.HttpLayer):
        # NextLayer holds its decision in `layer`; the tunnel layers their child in `child_layer`.
        layer = getattr(layer, "child_layer", None) or getattr(layer, "layer", None)
    return layer


def _http1_client(http_layer: Any, server: connection.Server) -> Any:
    """The Http1Client layer serving `server`, or None."""
    stack_top = http_layer.connections.get(server)
    client = getattr(stack_top, "child_layer", None)  # HttpClient wraps the protocol's layer
    return client if isinstance(client, _http1.Http1Client) else None


def between_exchanges(http1: Any) -> bool:
    """Whether an HTTP/1 connection's layer (either side) is back to reading a head, with nothing
    of the last exchange or of a next one kept."""
    return (
        http1.request is None
        and http1.response is None
        and not http1.request_done
        and not http1.response_done
        and not http1.buf
        and http1.state == http1.read_headers
        and http1._paused is None
    )


def _detachable(client: connection.Client, server: connection.Server) -> tuple[Any, Any, ParkedSocket] | None:
    """`server`'s transport, its client's HTTP layer and its socket, if it is a plain HTTP/1
    connection between exchanges (its last response read in full, nothing of a next request
    sent, nothing unread); None otherwise."""
    if (
        server.state is not connection.ConnectionState.OPEN
        or server.tls
        or server.via is not None
        or server.transport_protocol != "tcp"
        or server.address is None
    ):
        return None
    handler = connection_handler(client)
    io = handler.transports.get(server) if handler is not None else None
    if io is None or io.handler is None or not isinstance(io.writer, asyncio.StreamWriter):
        return None
    http_layer = http_layer_of(handler.layer)
    http1 = _http1_client(http_layer, server) if http_layer is not None else None
    if http1 is None or http1.stream_id is not None or not between_exchanges(http1):
        return None
    assert isinstance(io.reader, asyncio.StreamReader)
    socket = ParkedSocket((server.address[0], server.address[1]), io.reader, io.writer)
    return (io, http_layer, socket) if socket.clean() else None


def detachable(client: connection.Client, server: connection.Server) -> bool:
    return _detachable(client, server) is not None


def detach(
    client: connection.Client, server: connection.Server, released: Callable[[ParkedSocket], None]
) -> bool:
    """Take `server`'s socket from `client`'s handler, if it is `detachable`; False otherwise.
    `released` gets the socket once the handler's task that read it has ended: until then that
    task may still be waiting on the socket's reader, and asyncio allows one reader at a time."""
    found = _detachable(client, server)
    if found is None:
        return False
    io, http_layer, socket = found
    # Closed for this client's layers at once (no request of its own goes out on it), and its
    # reading task stops without closing the socket.
    io.writer = ReleasedWriter(io.writer)
    server.state = connection.ConnectionState.CLOSED

    def let_go(_task: Any) -> None:
        # mitmproxy's HttpLayer keeps every connection it ever had (it only skips closed ones):
        # the entry goes once the layers have seen this one close, or a long-lived client whose
        # sockets keep going to others would gather them.
        http_layer.connections.pop(server, None)
        released(socket)

    io.handler.add_done_callback(let_go)
    io.handler.cancel("its socket went to another client")
    return True


_delivered: contextvars.ContextVar[ParkedSocket | None] = contextvars.ContextVar("delivered", default=None)


def deliver(socket: ParkedSocket) -> None:
    """The next connection mitmproxy opens to `socket.address` in this task uses `socket`."""
    _delivered.set(socket)


def take_undelivered() -> ParkedSocket | None:
    """What `deliver` gave this task and mitmproxy did not take (it did not open a connection)."""
    socket = _delivered.get()
    _delivered.set(None)
    return socket


class _AsyncioWithDeliveries:
    """asyncio as mitmproxy's proxy/server.py sees it: its own ``open_connection`` takes a
    delivered socket for the address instead of connecting."""

    def __init__(self, original: Any) -> None:
        self._original = original

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)

    async def open_connection(self, host: str, port: int, **kwargs: Any) -> Any:
        socket = take_undelivered()
        if socket is not None:
            if socket.address == (host, port) and kwargs.get("local_addr") is None and socket.usable():
                return socket.reader, socket.writer
            socket.close()  # the room it held is this connection's now
        return await self._original.open_connection(host, port, **kwargs)


class SocketHandover:
    """Installs the delivery in mitmproxy's server module while the gateway is loaded."""

    def __init__(self) -> None:
        self._patches = Patches()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(mitmproxy_server, "asyncio", _AsyncioWithDeliveries)

    def uninstall(self) -> None:
        self._patches.restore()
