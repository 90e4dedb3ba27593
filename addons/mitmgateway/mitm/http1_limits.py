"""Request limits where no hook sees them: in mitmproxy's HTTP/1 head reader and body buffering.

Written against mitmproxy 11.0 (``proxy/layers/http/_http1.py`` and ``proxy/layers/http/__init__.py``):
its HTTP/1 server layer keeps reading a request head that never ends (its own source marks it
"FIXME: protect against header size DoS"), with no deadline, and ``HttpStream`` holds a request
body in memory to its end, even for a request already answered. `RequestLimitGuards` swaps in
guarded versions of ``Http1Server.read_headers`` and ``_handle_event`` (head size and deadline)
and ``HttpStream.state_consume_request_body`` (held body size) while the gateway is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import connection, http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

from ..clients import peer_host
from ..config.model import RequestLimits
from ..request_limits import BODY_TOO_LARGE, HEADERS_TIMEOUT, HEADERS_TOO_LARGE
from .injection import close_client
from .patches import Patches, method_guard

logger = logging.getLogger(__name__)


_Commands = Generator[commands.Command, Any, None]


class RequestLimitGuards:
    """Guards mitmproxy's HTTP/1 request-head reading, and its request-body buffering (for every
    HTTP version)."""

    def __init__(
        self, render: Callable[[int, str], bytes], refuse: Callable[[http.HTTPFlow, int, str], None]
    ) -> None:
        self.limits = RequestLimits()
        self._render = render
        """The gateway's error answer (text or JSON), as bytes to send."""
        self._refuse = refuse
        """The gateway's way to answer a flow with a refusal (and record it)."""
        self._patches = Patches()
        # When each connection's current request head began, for the headers timeout.
        self._head_started: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        # Connections that have sent no request yet: from the connect to the first byte of a
        # request head (a TLS handshake included), the same headersTimeoutMs applies.
        self._first_request: dict[str, asyncio.TimerHandle] = {}

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(_http1.Http1Server, "read_headers", method_guard(self._read_headers))
            self._patches.replace(_http1.Http1Server, "_handle_event", method_guard(self._handle_event))
            self._patches.replace(
                http_layers.HttpStream, "state_consume_request_body", method_guard(self._consume_request_body)
            )

    def uninstall(self) -> None:
        self._patches.restore()
        for timer in self._first_request.values():
            timer.cancel()
        self._first_request.clear()

    def client_connected(self, client: connection.Client) -> None:
        if self.limits.headers_timeout_ms:
            self._first_request[client.id] = asyncio.get_running_loop().call_later(
                self.limits.headers_timeout_ms / 1000, self._no_request_in_time, client
            )

    def request_started(self, client_id: str) -> None:
        """A request (or an HTTP/1 head's first bytes) arrived; also when the client left."""
        if self._first_request and (timer := self._first_request.pop(client_id, None)) is not None:
            timer.cancel()

    def _no_request_in_time(self, client: connection.Client) -> None:
        self._first_request.pop(client.id, None)
        logger.info("%s: no request within headersTimeoutMs of connecting", peer_host(client))
        close_client(client)

    def _read_headers(self, original: Callable[..., _Commands], layer: Any, event: events.Event) -> _Commands:
        yield from original(layer, event)
        if layer.state != layer.read_headers or not isinstance(event, events.DataReceived):
            if self._head_started:  # mostly empty: a head usually comes whole, in one read
                self._head_started.pop(layer, None)
            return
        if not layer.buf:
            return
        limits = self.limits
        if limits.max_header_bytes and len(layer.buf) > limits.max_header_bytes:
            yield from self._refuse_head(layer, 431, HEADERS_TOO_LARGE)
            return
        if not limits.headers_timeout_ms:
            return
        now = time.monotonic()
        started = self._head_started.setdefault(layer, now)
        if now - started > limits.headers_timeout_ms / 1000:
            yield from self._refuse_head(layer, 408, HEADERS_TIMEOUT)
        elif started == now:
            self.request_started(layer.conn.id)  # the head's own deadline takes over
            # A client that goes quiet mid-head sends no event to check the deadline on: ask
            # mitmproxy for one (it arrives through TLS too, as HTTP/2's own timers do).
            yield commands.RequestWakeup(limits.headers_timeout_ms / 1000 + 0.01)

    def _handle_event(self, original: Callable[..., _Commands], layer: Any, event: events.Event) -> _Commands:
        if not isinstance(event, events.Wakeup):
            yield from original(layer, event)
            return
        # The HTTP/1 server layer asks for no wakeups itself: this is a head deadline, maybe of
        # an earlier head on this connection (the current one then has its own), or of a limit
        # a reload has since turned off.
        timeout = self.limits.headers_timeout_ms
        started = self._head_started.get(layer)
        if (
            timeout
            and started is not None
            and layer.state == layer.read_headers
            and time.monotonic() - started >= timeout / 1000
        ):
            yield from self._refuse_head(layer, 408, HEADERS_TIMEOUT)

    def _refuse_head(self, layer: Any, status: int, message: str) -> _Commands:
        self._head_started.pop(layer, None)
        logger.info("%s: request head refused with %d (%s)", peer_host(layer.conn), status, message)
        yield commands.SendData(layer.conn, self._render(status, message))
        yield commands.CloseConnection(layer.conn)
        layer.state = layer.done

    def _consume_request_body(self, original: Callable[..., _Commands], stream: Any, event: Any) -> _Commands:
        if isinstance(event, http_layers.RequestData):
            flow: http.HTTPFlow = stream.flow
            if flow.response is not None:
                # Answered before its body (401, 429, 413...): nobody will read the body.
                return
            limit = self.limits.held_body_bytes
            if limit and len(stream.request_body_buf) + len(event.data) > limit:
                stream.request_body_buf.clear()
                self._refuse(flow, 413, BODY_TOO_LARGE)
                return
        yield from original(stream, event)
