"""Idle keep-alive clients held as a bare socket, so that a crowd of them costs next to nothing.

Every half second, each plain-HTTP/1 client connection that has been idle for
`SET_ASIDE_AFTER_SECONDS`, between two requests, is set aside (mitm/resting_clients.py): its
mitmproxy handler ends, its upstream connections go back to their pools as on any client's leave,
and its socket waits in the event loop's selector. When the client sends again, its socket is
served as a newly accepted connection; when it closes, or stays idle for mitmproxy's own idle
timeout, the socket is closed. A client sees one keep-alive connection throughout; mitmproxy's
hooks see a client connection end when it is set aside and a new one begin when it sends again.

TLS clients stay as they are: their TLS session lives in mitmproxy's layers. So do HTTP/2 clients
(several streams, a connection-level state) and a connection in the middle of anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from mitmproxy import ctx
from mitmproxy.proxy import server as mitmproxy_server

from ..mitm.proxyserver import live_handlers
from ..mitm.resting_clients import RestingClient, serve_again, set_aside
from ..observe.metrics import GatewayMetrics

SET_ASIDE_AFTER_SECONDS = 2.0
"""Idle this long, a client is set aside. A client that sends more often is never set aside, so a
busy keep-alive client never pays for being served again."""
SWEEP_SECONDS = 0.5
EXPIRY_SWEEPS = 10
"""Resting sockets are checked against the idle timeout every this many sweeps."""


class IdleClients:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._resting: dict[int, RestingClient] = {}
        """By the socket's descriptor, as the selector knows it."""
        self._waking: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._ended = False

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def done(self) -> None:
        """On a code reload, resting clients are served again (the next code's addon sets them
        aside later); on the way out, their sockets close."""
        self._ended = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        exiting = ctx.master.should_exit.is_set()
        for resting in list(self._resting.values()):
            self._unregister(resting)
            if exiting:
                resting.close()
            else:
                self._serve(resting)

    async def _sweep_forever(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.time()
            handlers = live_handlers()
            for handler in handlers:
                if now - handler.timeout_watchdog.last_activity >= SET_ASIDE_AFTER_SECONDS:
                    set_aside(handler, self._rest)
            # As the sweep found them: those it set aside still count as live until they end.
            self._metrics.client_connections(len(handlers), len(self._resting))
            sweeps += 1
            if sweeps % EXPIRY_SWEEPS == 0:
                self._close_expired(now - mitmproxy_server.TCP_TIMEOUT)

    def _rest(self, resting: RestingClient) -> None:
        if self._ended:  # the addon went while the handler was ending
            if ctx.master.should_exit.is_set():
                resting.close()
            else:
                self._serve(resting)
            return
        descriptor = resting.socket.fileno()
        self._resting[descriptor] = resting
        asyncio.get_running_loop().add_reader(descriptor, self._readable, resting)

    def _unregister(self, resting: RestingClient) -> None:
        descriptor = resting.socket.fileno()
        self._resting.pop(descriptor, None)
        asyncio.get_running_loop().remove_reader(descriptor)

    def _readable(self, resting: RestingClient) -> None:
        self._unregister(resting)
        try:
            first = resting.socket.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._rest(resting)  # woken for nothing
            return
        except OSError:
            first = b""
        if first:
            self._serve(resting)
        else:
            resting.close()  # the client closed it: nobody to serve

    def _serve(self, resting: RestingClient) -> None:
        task = asyncio.get_running_loop().create_task(serve_again(resting))
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)

    def _close_expired(self, idle_since_before: float) -> None:
        """mitmproxy closes a connection idle for its TCP_TIMEOUT; a resting one goes the same way."""
        for resting in [r for r in self._resting.values() if r.idle_since < idle_since_before]:
            self._unregister(resting)
            with contextlib.suppress(OSError):
                resting.close()
