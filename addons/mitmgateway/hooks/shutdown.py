"""Graceful shutdown: on SIGTERM stop accepting, let requests in flight finish, then exit 0.

mitmproxy exits at once on SIGTERM, cutting every exchange in progress: behind a load balancer or
an orchestrator that sends SIGTERM before each deploy, that is a burst of failed requests. This
addon takes SIGTERM over (SIGINT, Ctrl-C, keeps mitmproxy's immediate exit): it closes the
listening sockets, marks responses still to come with ``Connection: close``, closes idle
keep-alive connections once nothing is in flight, and then asks mitmproxy to exit. Requests still
running after ``gateway_shutdown_timeout`` seconds are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections.abc import Callable

from mitmproxy import ctx, http

from ..mitm.proxyserver import close_all_connections, open_connections, stop_listening

logger = logging.getLogger("mitmgateway")

DRAIN_POLL_SECONDS = 0.05


class GracefulShutdown:
    def __init__(
        self, on_drain: Callable[[], None] = lambda: None, close_idle: Callable[[], None] = lambda: None
    ) -> None:
        """`on_drain`: called as the drain begins (readiness goes to 503); `close_idle`: when the
        idle keep-alive connections close (those mitmproxy does not hold: hooks/idle_clients.py)."""
        self.on_drain = on_drain
        self.close_idle = close_idle
        self.in_flight: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self.draining = False
        self._drain: asyncio.Task[None] | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "gateway_shutdown_timeout",
            int,
            30,
            "Seconds a SIGTERM waits for requests in flight before the gateway exits anyway.",
        )

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        # Replaces mitmproxy's own SIGTERM handler (an immediate exit).
        loop.add_signal_handler(signal.SIGTERM, self.begin)

    def done(self) -> None:
        # A code reload replaces this addon: hand SIGTERM back until the new one takes it. A
        # drain in progress cannot follow (its flows' events go to the new addon): exit now.
        if self._drain is not None:
            self._drain.cancel()
            ctx.master.shutdown()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, ctx.master.shutdown)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Not on a 101: a WebSocket handshake needs its Connection: Upgrade.
        if self.draining and flow.response is not None and flow.response.status_code != 101:
            flow.response.headers["Connection"] = "close"

    def response(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.in_flight.discard(flow)

    def begin(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        try:
            await self._drain_requests()
        except Exception:  # whatever failed, the process still exits
            logger.exception("graceful shutdown failed; exiting now")
        ctx.master.shutdown()

    async def _drain_requests(self) -> None:
        self.draining = True
        timeout = ctx.options.gateway_shutdown_timeout
        logger.info(
            "SIGTERM: no longer accepting connections; waiting up to %gs for %d request(s) in flight",
            timeout,
            len(self.in_flight),
        )
        # server=False too, so that a config or code reload during the drain cannot listen again.
        ctx.options.update(server=False)
        self.on_drain()
        await stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if self.in_flight:
            logger.warning("shutting down with %d request(s) still in flight", len(self.in_flight))
        # The last responses may still be on their way out: give them a moment, then close the
        # keep-alive connections that are left idle.
        await asyncio.sleep(DRAIN_POLL_SECONDS)
        self.close_idle()
        close_all_connections()
        while open_connections() and loop.time() < deadline + 1:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
