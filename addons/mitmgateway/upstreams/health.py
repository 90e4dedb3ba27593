"""Passive health checks: a serviceEndpoint's urls in rotation, judged by the traffic itself.

A url that refuses connections, does not accept one in time, or does not answer within the proxy
step's timeout fails; `HealthCheck.max_failures` consecutive failures take it out of the
rotation for `cool_down_ms`, after which the next request tries it again (one success brings it
back). With several urls, the gateway checks that a new upstream connection can be made before
mitmproxy makes it (mitmproxy cannot retry a connection it failed to open), and sends a request
whose url is unreachable to the next one: nothing of the request was sent, so this is safe for
any method. Each change is logged and written to the flow's record, where the metrics find it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import connection

from ..decision import Decision
from .endpoints import ServiceEndpoint, Upstream

logger = logging.getLogger(__name__)


class UpstreamPool:
    """One serviceEndpoint's urls: round-robin over those not cooling down after failures."""

    def __init__(self, service: ServiceEndpoint) -> None:
        self.service = service
        self.upstreams = service.upstreams
        self.check = service.health_check
        self._next = 0
        self._failures = [0] * len(self.upstreams)
        self._down_until = [0.0] * len(self.upstreams)

    @property
    def has_spare(self) -> bool:
        return len(self.upstreams) > 1

    def pick(self, instead_of: Upstream | None = None) -> Upstream | None:
        """The next url in rotation; when every url is cooling down, the next one anyway (better
        a try than a certain 502).

        `instead_of`: another url than this one, of the same scheme (the upstream connection's
        TLS or not is already decided), or None if there is none.
        """
        now = time.monotonic()
        count = len(self.upstreams)
        fallback = None
        for _ in range(count):
            index = self._next
            self._next = (index + 1) % count
            upstream = self.upstreams[index]
            if instead_of is not None and (upstream == instead_of or upstream.scheme != instead_of.scheme):
                continue
            if self._down_until[index] <= now:
                return upstream
            fallback = fallback or upstream
        return fallback

    def upstream_at(self, address: Any) -> Upstream | None:
        return next((u for u in self.upstreams if (u.host, u.port) == address), None)

    def failed(self, upstream: Upstream, reason: str, decision: Decision, detail: str = "") -> None:
        """`reason` is one of a few words (a metric label); `detail` what the log adds to it."""
        index = self.upstreams.index(upstream)
        self._failures[index] += 1
        decision.add_upstream_failure(_name(upstream), reason)
        if self._failures[index] >= self.check.max_failures:
            was_up = self._down_until[index] <= time.monotonic()
            self._down_until[index] = time.monotonic() + self.check.cool_down_ms / 1000
            if was_up:
                decision.upstream_down = _name(upstream)
                logger.warning(
                    "upstream %s of serviceEndpoint %s is down (%s); out of rotation for %d ms",
                    _name(upstream),
                    self.service.name,
                    f"{reason}: {detail}" if detail else reason,
                    self.check.cool_down_ms,
                )

    def succeeded(self, upstream: Upstream, decision: Decision) -> None:
        index = self.upstreams.index(upstream)
        if self._failures[index] >= self.check.max_failures:
            decision.upstream_up = _name(upstream)
            logger.warning("upstream %s of serviceEndpoint %s is back", _name(upstream), self.service.name)
        self._failures[index] = 0
        self._down_until[index] = 0.0

    async def reachable(self, upstream: Upstream, decision: Decision) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port), self.check.connect_timeout_ms / 1000
            )
        except TimeoutError:
            self.failed(upstream, "connect timeout", decision)
            return False
        except OSError as e:
            self.failed(upstream, "connect failed", decision, e.strerror or type(e).__name__)
            return False
        writer.close()
        return True


def _name(upstream: Upstream) -> str:
    return f"{upstream.scheme}://{upstream.authority}"


class UpstreamTarget:
    """Where a proxy step sent one request, and how to send it elsewhere before it is sent."""

    __slots__ = ("__weakref__", "aim", "decision", "pending", "pool", "shared", "upstream")

    def __init__(
        self, pool: UpstreamPool, upstream: Upstream, aim: Callable[[Upstream], None], decision: Decision
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        self.aim = aim
        """Rewrites the request (scheme, host, port, path, Host) for another url of the pool."""
        self.decision = decision
        self.pending = True
        """Until its upstream connection is being made, or the request is over."""
        self.shared = False
        """Another request on the same client connection waits for the same url (HTTP/2): the
        server_* hooks cannot tell which connection is whose, so neither is moved."""

    @property
    def address(self) -> tuple[str, int]:
        return self.upstream.host, self.upstream.port

    def settle(self) -> None:
        self.pending = False

    async def ensure_reachable(self, server: connection.Server) -> None:
        """Before mitmproxy connects `server`: move it to the next url if this one is unreachable."""
        self.pending = False
        if self.shared or not self.pool.has_spare or server.address != self.address:
            return
        if await self.pool.reachable(self.upstream, self.decision):
            return
        alternative = self.pool.pick(instead_of=self.upstream)
        if alternative is None:
            return
        if server.sni == self.upstream.host:
            server.sni = alternative.host
        self.upstream = alternative
        self.aim(alternative)
        server.address = self.address
        self.decision.upstream_retried = True

    def connected(self, server: connection.Server) -> None:
        upstream = self.pool.upstream_at(server.address)
        if upstream is None:
            return
        if server.error:
            self.pool.failed(upstream, "connect failed", self.decision, server.error)
        else:
            self.pool.succeeded(upstream, self.decision)
