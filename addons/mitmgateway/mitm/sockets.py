"""Upstream sockets handed from one client connection to another.

mitmproxy gives each client connection its own upstream connections: its layers (the HTTP/1
client's state) and the task reading the socket belong to that client's ConnectionHandler. What
can pass between clients is the socket underneath, at a message boundary: `detach` takes an idle
HTTP/1 upstream socket away from its client's handler (its layers see the connection close, as
when an upstream closes an idle one), and `deliver` gives it to the next connection mitmproxy
opens to the same address in the current task, in place of a new one (its layers start afresh on
it, as on any new connection). A TLS connection's session goes with its socket: its OpenSSL
object, which mitmproxy's TLS layer holds and only reads and writes through, is handed to the next
connection's TLS layer in place of a new one (`ParkedSocket.tls`); an established one makes no
handshake again.

Written against mitmproxy 11.0.2's ``proxy/server.py``: ``ConnectionHandler.open_connection``
opens through the module's ``asyncio.open_connection`` in the task that then serves the
connection (and runs the server_connect hook first, where `deliver` is called);
``handle_connection`` closes ``transports[connection].writer`` when its reading task is cancelled;
``proxy/layers/http``: ``HttpLayer.connections``, ``HttpClient.child_layer`` and
``Http1Client``'s state between exchanges (what ``Http1Connection.mark_done`` resets);
``proxy/layers/tls.py``: ``TLSLayer.start_tls`` takes the ``tls_start_server`` hook's OpenSSL object
as it is (``do_handshake`` on an established one returns at once), ``send_close`` and
``receive_close`` send no close_notify, and ``ServerTLSLayer`` is the top of a TLS connection's
stack in ``HttpLayer.connections``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection
from mitmproxy.proxy import server as mitmproxy_server
from mitmproxy.proxy import tunnel
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import tls as tls_layers
from mitmproxy.proxy.layers.http import _http1
from OpenSSL import SSL

from .patches import Patches
from .proxyserver import connection_handler

Address = tuple[str, int]


@dataclass(eq=False)
class ParkedSocket:
    """An upstream socket between two clients: nothing in flight on it, nothing unread."""

    address: Address
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls: SSL.Connection | None = None
    """A TLS connection's OpenSSL object: its session, established."""
    verified_for: Hashable = None
    """What a TLS connection's handshake verified it for (UpstreamConnections says what that is):
    only a connection that would be verified alike may take it."""
    last_used: float = field(default_factory=time.monotonic)
    """When its last exchange ended: the upstream's own keep-alive timeout runs from there."""
    taken: bool = False
    """Taken by the connection it was delivered to (not refused as no longer usable)."""

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


def _connection_layers(http_layer: Any, server: connection.Server) -> tuple[Any, Any] | None:
    """The ServerTLSLayer (None without TLS) and the Http1Client layer serving `server`, or None."""
    stack_top = http_layer.connections.get(server)
    tls_layer = None
    if isinstance(stack_top, tls_layers.ServerTLSLayer):
        tls_layer, stack_top = stack_top, stack_top.child_layer
    client = getattr(stack_top, "child_layer", None)  # HttpClient wraps the protocol's layer
    return (tls_layer, client) if isinstance(client, _http1.Http1Client) else None


class _RecordFraming:
    """Where the ciphertext a TLS connection received stands in its records (each a 5-byte head
    ending in the body's length, then the body). OpenSSL keeps a record that arrived in part to
    itself, and pyOpenSSL cannot tell: the upstream's bytes past its last answer, which on a plain
    connection wait in the reader's buffer, would then pass unseen to the next client."""

    __slots__ = ("body_left", "head")

    def __init__(self) -> None:
        self.head = b""
        self.body_left = 0

    def feed(self, data: bytes) -> None:
        at, end = 0, len(data)
        while at < end:
            if self.body_left:
                step = min(self.body_left, end - at)
                self.body_left -= step
                at += step
            else:
                missing = 5 - len(self.head)
                self.head += data[at : at + missing]
                at += missing
                if len(self.head) == 5:
                    self.body_left = int.from_bytes(self.head[3:5], "big")
                    self.head = b""

    @property
    def between_records(self) -> bool:
        return not self.body_left and not self.head


_framing: weakref.WeakKeyDictionary[Any, _RecordFraming] = weakref.WeakKeyDictionary()
"""Of each ServerTLSLayer, from the first byte its server sent."""


def _framing_followed(original: Any) -> Any:
    """A ServerTLSLayer's receive_data or receive_handshake_data, which also follows the records."""

    @functools.wraps(original)
    def receive(layer: Any, data: bytes) -> Any:
        if data:
            framing = _framing.get(layer)
            if framing is None:
                framing = _framing[layer] = _RecordFraming()
            framing.feed(data)
        return (yield from original(layer, data))

    return receive


def _tls_between_exchanges(layer: Any) -> bool:
    """Whether a TLS connection's session may go to another connection: established, HTTP/1 by
    ALPN, no close_notify either way, nothing decrypted and unread, no record received in part,
    no renegotiation begun."""
    session = layer.tls
    framing = _framing.get(layer)
    return (
        session is not None
        and framing is not None
        and framing.between_records
        and layer.tunnel_state is tunnel.TunnelState.OPEN
        and layer.conn.tls_established
        and layer.conn.alpn in (None, b"", b"http/1.1")
        and session.get_shutdown() == 0
        and session.pending() == 0
        and not session.renegotiate_pending()
    )


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
    """`server`'s transport, its client's HTTP layer and its socket, if it is an HTTP/1
    connection between exchanges (its last response read in full, nothing of a next request
    sent, nothing unread, over TLS or not); None otherwise."""
    if (
        server.state is not connection.ConnectionState.OPEN
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
    layers = _connection_layers(http_layer, server) if http_layer is not None else None
    if layers is None:
        return None
    tls_layer, http1 = layers
    if http1.stream_id is not None or not between_exchanges(http1):
        return None
    if server.tls and (tls_layer is None or not _tls_between_exchanges(tls_layer)):
        return None
    assert isinstance(io.reader, asyncio.StreamReader)
    session = tls_layer.tls if server.tls else None
    socket = ParkedSocket((server.address[0], server.address[1]), io.reader, io.writer, session)
    return (io, http_layer, socket) if socket.clean() else None


def detachable(client: connection.Client, server: connection.Server) -> bool:
    return _detachable(client, server) is not None


def detach(
    client: connection.Client,
    server: connection.Server,
    released: Callable[[ParkedSocket], None],
    verified_for: Hashable,
) -> bool:
    """Take `server`'s socket from `client`'s handler, if it is `detachable`; False otherwise.
    `released` gets the socket once the handler's task that read it has ended: until then that
    task may still be waiting on the socket's reader, and asyncio allows one reader at a time
    (and the client's TLS layer may still hold the session)."""
    found = _detachable(client, server)
    if found is None:
        return False
    io, http_layer, socket = found
    socket.verified_for = verified_for
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
                socket.taken = True
                return socket.reader, socket.writer
            socket.close()  # the room it held is this connection's now
        return await self._original.open_connection(host, port, **kwargs)


def _finishing_an_established_handshake(original: Any) -> Any:
    """ServerTLSLayer.start_handshake, which also finishes a handshake its session had done before
    (a parked socket's): mitmproxy finishes one only on data from the server (TunnelLayer's
    DataReceived), and an established session has none to send."""

    @functools.wraps(original)
    def start_handshake(layer: Any) -> Any:
        yield from original(layer)
        # (Only on the lazy path, the one the gateway's listeners set: the eager one waits on no
        # command, and a session handed to it would wait for data that never comes.)
        if (
            layer.tunnel_state is tunnel.TunnelState.ESTABLISHING
            and layer.command_to_reply_to is not None
            and layer.conn.tls_established
        ):
            yield from layer._handshake_finished(None)

    return start_handshake


class SocketHandover:
    """Installs the delivery in mitmproxy's server module while the gateway is loaded."""

    def __init__(self) -> None:
        self._patches = Patches()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(mitmproxy_server, "asyncio", _AsyncioWithDeliveries)
            server_tls = tls_layers.ServerTLSLayer
            self._patches.replace(server_tls, "start_handshake", _finishing_an_established_handshake)
            self._patches.replace(server_tls, "receive_handshake_data", _framing_followed)
            self._patches.replace(server_tls, "receive_data", _framing_followed)

    def uninstall(self) -> None:
        self._patches.restore()
