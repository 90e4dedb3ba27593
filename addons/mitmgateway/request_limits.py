"""Request limits (``limits``): header size (431), body size (413) and slow headers (408).

A complete request is checked by `refusal` in the gateway's requestheaders hook. What comes
before that, and what mitmproxy buffers without bound, no hook sees: mitmproxy's HTTP/1 server
layer keeps reading a request head that never ends (its own source marks it "FIXME: protect
against header size DoS"), with no deadline, and holds a request body in memory to its end,
even for a request already answered. `RequestLimitGuards` swaps in guarded versions of those
methods while the gateway is loaded (patches.py), as `ProxyErrorAnswers` does for mitmproxy's
error page.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

from .answers import closing_answer_to
from .clients import peer_host
from .config.loader import RequestLimits
from .patches import Patches, method_guard

logger = logging.getLogger(__name__)

HEADERS_TOO_LARGE = "Request Header Fields Too Large"
BODY_TOO_LARGE = "Payload Too Large"
HEADERS_TIMEOUT = "Request Timeout"


def head_size(request: http.Request) -> int:
    """The request line and headers as sent in HTTP/1 (CRLFs and ': ' included)."""
    line = len(request.data.method) + len(request.data.path) + len(request.data.http_version) + 4
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers.fields) + 2


def refusal(limits: RequestLimits, request: http.Request) -> tuple[int, str] | None:
    """431 or 413 for a request whose head is over the limits, else None."""
    if limits.max_header_bytes and head_size(request) > limits.max_header_bytes:
        return 431, HEADERS_TOO_LARGE
    if limits.max_body_bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_body_bytes:
            return 413, BODY_TOO_LARGE
    return None


_Commands = Generator[commands.Command, Any, None]


class RequestLimitGuards:
    """Guards mitmproxy's HTTP/1 request-head reading, and its request-body buffering (for every
    HTTP version)."""

    def __init__(self, render: Callable[[int, str], bytes]) -> None:
        self.limits = RequestLimits()
        self._render = render
        """The gateway's error answer (text or JSON), as bytes to send."""
        self._patches = Patches()
        # When each connection's current request head began, for the headers timeout.
        self._head_started: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(_http1.Http1Server, "read_headers", method_guard(self._read_headers))
            self._patches.replace(_http1.Http1Server, "_handle_event", method_guard(self._handle_event))
            self._patches.replace(
                http_layers.HttpStream, "state_consume_request_body", method_guard(self._consume_request_body)
            )

    def uninstall(self) -> None:
        self._patches.restore()

    def _read_headers(self, original: Callable[..., _Commands], layer: Any, event: events.Event) -> _Commands:
        yield from original(layer, event)
        if layer.state != layer.read_headers or not isinstance(event, events.DataReceived):
            if self._head_started:  # mostly empty: a head usually comes whole, in one read
                self._head_started.pop(layer, None)
            return
        if not layer.buf:
            return
        limits = self.limits
        now = time.monotonic()
        started = self._head_started.setdefault(layer, now)
        if limits.max_header_bytes and len(layer.buf) > limits.max_header_bytes:
            yield from self._refuse_head(layer, 431, HEADERS_TOO_LARGE)
        elif limits.headers_timeout_ms and now - started > limits.headers_timeout_ms / 1000:
            yield from self._refuse_head(layer, 408, HEADERS_TIMEOUT)
        elif started == now and limits.headers_timeout_ms:
            # A client that goes quiet mid-head sends no event to check the deadline on: ask
            # mitmproxy for one (it arrives through TLS too, as HTTP/2's own timers do).
            yield commands.RequestWakeup(limits.headers_timeout_ms / 1000 + 0.01)

    def _handle_event(self, original: Callable[..., _Commands], layer: Any, event: events.Event) -> _Commands:
        if not isinstance(event, events.Wakeup):
            yield from original(layer, event)
            return
        # The HTTP/1 server layer asks for no wakeups itself: this is a head deadline, maybe of
        # an earlier head on this connection (the current one then has its own).
        started = self._head_started.get(layer)
        timeout = self.limits.headers_timeout_ms / 1000
        if (
            layer.state == layer.read_headers
            and started is not None
            and time.monotonic() - started >= timeout
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
                flow.response = closing_answer_to(flow, 413, BODY_TOO_LARGE)
                flow.metadata.setdefault("gateway", {})["answeredBy"] = "limits.maxBodyBytes"
                return
        yield from original(stream, event)
