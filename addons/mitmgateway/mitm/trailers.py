"""Trailer fields mitmproxy's HTTP/1 code cannot take: refused cleanly instead of crashing it
(written against mitmproxy 11.0's ``_http1``).

Its HTTP/1 reader raises NotImplementedError on trailer fields after a chunked body, which it logs
as "mitmproxy has crashed!" before dropping the connection. The gateway makes that an ordinary
protocol error, the way the reader treats malformed chunking: a client gets 400 (when nothing has
been answered on its connection yet) and the connection closes; an upstream's answer becomes a 502.

Its HTTP/1 sender fails the same way on an HTTP/2 client's request trailers. The gateway refuses
those with 400 before anything is forwarded (its request hook) when it holds the body; a body
over 1 MiB streams upstream as it comes, so its trailers arrive after it: the upstream connection
is then closed there, and the client gets 502 (or its stream is reset, if the answer had begun).
Response trailers over HTTP/2 are supported by mitmproxy and pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import RequestTrailers, ResponseProtocolError

from ..clients import peer_host
from .patches import Patches, method_guard

logger = logging.getLogger(__name__)

NOT_SUPPORTED = "Trailer fields after an HTTP/1 chunked body are not supported"
NOT_FORWARDED = "Request trailer fields cannot be sent to an HTTP/1 upstream"


class TrailerFields:
    def __init__(self, render: Callable[[int, str], bytes]) -> None:
        self._render = render
        """The gateway's error answer (text or JSON), as bytes to send."""
        self._patches = Patches()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(_http1.Http1Connection, "read_body", method_guard(self._read_body))
            self._patches.replace(_http1.Http1Client, "send", method_guard(self._send))

    def uninstall(self) -> None:
        self._patches.restore()

    def _read_body(
        self, original: Callable[..., Generator[commands.Command, Any, None]], layer: Any, event: events.Event
    ) -> Generator[commands.Command, Any, None]:
        try:
            yield from original(layer, event)
        except NotImplementedError:
            from_client = isinstance(layer, _http1.Http1Server)
            side = "client" if from_client else "upstream"
            logger.info("%s %s: %s", side, peer_host(layer.conn), NOT_SUPPORTED)
            if from_client and layer.response is None:
                yield commands.SendData(layer.conn, self._render(400, NOT_SUPPORTED))
            yield commands.CloseConnection(layer.conn)
            yield ReceiveHttp(layer.ReceiveProtocolError(layer.stream_id, NOT_SUPPORTED))

    def _send(
        self, original: Callable[..., Generator[commands.Command, Any, None]], layer: Any, event: Any
    ) -> Generator[commands.Command, Any, None]:
        if not isinstance(event, RequestTrailers):
            yield from original(layer, event)
            return
        logger.info("upstream %s: %s", peer_host(layer.conn), NOT_FORWARDED)
        yield commands.CloseConnection(layer.conn)
        yield ReceiveHttp(ResponseProtocolError(event.stream_id, NOT_FORWARDED))
