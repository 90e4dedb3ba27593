"""How many connections the gateway holds to each upstream: bounded, and none kept idle for long.

mitmproxy gives each client connection its own upstream connections, so without a bound an
upstream holds as many connections as the gateway has clients (10,000 idle mobile clients:
10,000 idle sockets on every service). Here, per upstream address:

- at most ``maxConnections`` are open at once: a request that would open one more first closes
  the connection idle the longest, and waits for one to close when none is idle;
- one whose client has had no request in flight for ``idleTimeoutMs`` is closed. The default,
  4 s, is below Node's own keep-alive timeout (5 s): the gateway lets go of a connection before
  a Node upstream does, so a request is never sent on a connection the upstream is closing.

A client whose upstream connection was closed gets a new one with its next request; nothing of a
request is ever sent on a closed connection (closing marks it closed at once, on the event loop).
This bounds connections, it does not hand one client's idle connection to another (mitmproxy's
layers tie a connection to its client's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.schema import option, positive


@dataclass(frozen=True)
class PoolSettings:
    """A serviceEndpoint's ``pool``."""

    max_connections: int = option("maxConnections", 200, parse=positive)
    """Upstream connections open to one address at once (Express Gateway's agent: 200)."""
    idle_timeout_ms: int = option("idleTimeoutMs", 4_000, parse=positive)
    """A connection whose client has sent nothing for this long is closed."""


@dataclass
class ClientActivity:
    """The requests of one client connection in flight (a WebSocket's until it ends)."""

    in_flight: set[str] = field(default_factory=set)
    idle_since: float = field(default_factory=time.monotonic)

    def idle_for(self, now: float) -> float | None:
        return None if self.in_flight else now - self.idle_since


@dataclass
class OpenConnection:
    close: Callable[[], None]
    activity: ClientActivity
    closing: bool = False
    """Closed by the pool, still counted until mitmproxy says it is gone."""

    def idle_for(self, now: float) -> float | None:
        return None if self.closing else self.activity.idle_for(now)


class AddressPool:
    """The upstream connections open to one address."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.open: dict[str, OpenConnection] = {}
        """By mitmproxy's server connection id."""
        self.opening = 0
        self._freed: asyncio.Event = asyncio.Event()

    @property
    def used(self) -> int:
        return len(self.open) + self.opening

    async def reserve(self, timeout: float) -> bool:
        """Room for one more connection, made or waited for; False if none came in `timeout`."""
        deadline = time.monotonic() + timeout
        while self.used >= self.settings.max_connections:
            if not any(c.closing for c in self.open.values()):
                self.close_idle(self._longest_idle())
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        self.opening += 1
        return True

    def connected(self, server_id: str, connection: OpenConnection) -> None:
        self.opening = max(0, self.opening - 1)
        self.open[server_id] = connection

    def failed(self) -> None:
        self.opening = max(0, self.opening - 1)
        self._freed.set()

    def disconnected(self, server_id: str) -> None:
        if self.open.pop(server_id, None) is not None:
            self._freed.set()

    def close_idle(self, server_id: str | None) -> bool:
        """Close a connection; it is counted until it is gone (`disconnected`), so that the
        upstream never holds more than the bound, not even for a moment."""
        connection = self.open.get(server_id) if server_id is not None else None
        if connection is None or connection.closing:
            return False
        connection.closing = True
        connection.close()
        return True

    def expired(self, now: float) -> list[str]:
        """The connections idle longer than the idle timeout."""
        limit = self.settings.idle_timeout_ms / 1000
        return [
            server_id
            for server_id, c in self.open.items()
            if (idle := c.idle_for(now)) is not None and idle >= limit
        ]

    def _longest_idle(self) -> str | None:
        now = time.monotonic()
        idle = [(c.idle_for(now), server_id) for server_id, c in self.open.items()]
        return max(((t, s) for t, s in idle if t is not None), default=(None, None))[1]
