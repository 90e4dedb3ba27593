"""Idle keep-alive clients held as a bare socket, so that a crowd of them costs next to nothing.

Every half second, each plain-HTTP/1 client connection that has been idle for
`SET_ASIDE_AFTER_SECONDS` between two requests (half a second in a crowd of more than `CROWD` live
client connections), is set aside (mitm/resting_clients.py): its
mitmproxy handler ends, its upstream connections go back to their pools as on any client's leave,
and its socket waits in the event loop's selector. A client holding an upstream connection that
could not go back to its pool (NTLM-authenticated, say) waits until the pool's idle timeout has
closed it: setting it aside sooner would cost its next request a new upstream connection. When
the client sends again, its socket is served as a newly accepted connection; when it closes, or
stays idle for mitmproxy's own idle timeout, the socket is closed. A client sees one keep-alive
connection throughout; mitmproxy's hooks see a client connection end when it is set aside and a
new one begin when it sends again (the new one's client_connected may come before the old one's
client_disconnected: an addon that follows clients by address rather than by connection id would
have to allow for it). On a code reload the resting sockets pass to the next code's addon as they
are.

TLS clients stay as they are: their TLS session lives in mitmproxy's layers. So do HTTP/2 clients
(several streams, a connection-level state) and a connection in the middle of anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from mitmproxy import ctx
from mitmproxy.proxy import server as mitmproxy_server

from ..mitm.proxyserver import live_handlers
from ..mitm.resting_clients import RestingClient, serve_again, set_aside
from ..observe.metrics import GatewayMetrics
from .upstream_connections import UpstreamConnections

logger = logging.getLogger("mitmgateway")

SET_ASIDE_AFTER_SECONDS = 2.0
"""Idle this long, a client is set aside. A client that sends more often is never set aside, so a
busy keep-alive client never pays for being served again."""
SWEEP_SECONDS = 0.5
CROWD = 256
"""More live client connections than this, and a client idle for `SWEEP_SECONDS` is set aside:
what a crowd arriving at once costs is then its busy clients' handlers, not every client's (2,000
clients making one request each: 12 KiB each at the peak instead of 25, in scripts/bench). The price is a
new handler for a client of the crowd that sends again after more than half a second."""
EXPIRY_SWEEPS = 10
"""Resting sockets are checked against the idle timeout every this many sweeps."""
HANDED_OVER = "_mitmgateway_resting_clients"
"""Where a code reload leaves the resting sockets for the next code's addon (on mitmproxy's master,
the one object both see)."""


class IdleClients:
    def __init__(self, metrics: GatewayMetrics, upstreams: UpstreamConnections) -> None:
        self._metrics = metrics
        self._upstreams = upstreams
        self._resting: dict[int, RestingClient] = {}
        """By the socket's descriptor, as the selector knows it."""
        self._waking: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._ended = False

    def running(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        handed_over: dict[int, Any] = getattr(ctx.master, HANDED_OVER, {})
        with contextlib.suppress(AttributeError):
            delattr(ctx.master, HANDED_OVER)
        for descriptor, previous in list(handed_over.items()):
            self._adopt(descriptor, previous)

    def done(self) -> None:
        """On a code reload, the resting sockets stay as they are, for the next code's addon to
        take over (until then the previous code serves those that send); on the way out, they
        close."""
        self._ended = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if ctx.master.should_exit.is_set():
            self.close_all()
        elif self._resting:
            setattr(ctx.master, HANDED_OVER, self._resting)
            # A reload runs the next code's `running` before the loop turns: if none took them
            # by then (the next code failed to build, or has no such addon), serve them again.
            asyncio.get_running_loop().call_soon(self._unclaimed)

    def _adopt(self, descriptor: int, previous: Any) -> None:
        """A resting client the previous code's addon left, made this code's (its class may have
        changed with the code) and watched by this code's callback."""
        asyncio.get_running_loop().remove_reader(descriptor)
        try:
            resting = RestingClient(previous.socket, previous.listener, previous.idle_since)
            self._rest(resting)
        except Exception:
            logger.exception("a resting client could not be taken over from the previous code; closed")
            with contextlib.suppress(Exception):
                previous.socket.close()

    def _unclaimed(self) -> None:
        if getattr(ctx.master, HANDED_OVER, None) is self._resting:
            delattr(ctx.master, HANDED_OVER)
            self._let_go_all(close=False)

    def close_all(self) -> None:
        """Close every resting client (a graceful shutdown's last step, and the exit's)."""
        self._let_go_all(close=True)

    def _let_go_all(self, close: bool) -> None:
        for resting in list(self._resting.values()):
            self._unregister(resting)
            self._let_go(resting, close)

    def _let_go(self, resting: RestingClient, close: bool) -> None:
        """A resting client this addon no longer watches: closed, or served as it is."""
        if close:
            with contextlib.suppress(OSError):
                resting.close()
        else:
            self._serve(resting)

    async def _sweep_forever(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self._sweep(sweeps)
            except Exception:  # a sweep that fails must not end the ones after it
                logger.exception("sweeping idle clients failed")
            sweeps += 1

    def _sweep(self, sweeps: int) -> None:
        now = time.time()
        handlers = live_handlers()
        set_aside_after = SWEEP_SECONDS if len(handlers) > CROWD else SET_ASIDE_AFTER_SECONDS
        ending = 0
        for handler in handlers:
            try:
                if (
                    now - handler.timeout_watchdog.last_activity >= set_aside_after
                    and self._upstreams.would_give_back(handler.client)
                ):
                    ending += set_aside(handler, self._rest)
            except Exception:  # one client's failure must not keep the others from rest
                logger.exception("setting an idle client aside failed")
        # Those set aside count as resting already: their handlers are ending.
        self._metrics.client_connections(len(handlers) - ending, len(self._resting) + ending)
        if sweeps % EXPIRY_SWEEPS == EXPIRY_SWEEPS - 1:
            self._close_expired(now - mitmproxy_server.TCP_TIMEOUT)

    def _rest(self, resting: RestingClient) -> None:
        if self._ended:  # the addon went while the handler was ending
            self._let_go(resting, close=ctx.master.should_exit.is_set())
            return
        asyncio.get_running_loop().add_reader(resting.descriptor, self._readable, resting)
        self._resting[resting.descriptor] = resting

    def _unregister(self, resting: RestingClient) -> None:
        self._resting.pop(resting.descriptor, None)
        asyncio.get_running_loop().remove_reader(resting.descriptor)

    def _readable(self, resting: RestingClient, expired: bool = False) -> None:
        self._unregister(resting)
        try:
            first = resting.socket.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            if expired:
                resting.close()
            else:
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
        """mitmproxy closes a connection idle for its TCP_TIMEOUT; a resting one goes the same way
        (unless what it just sent is waiting: closing it unread would reset the connection)."""
        for resting in [r for r in self._resting.values() if r.idle_since < idle_since_before]:
            self._readable(resting, expired=True)
