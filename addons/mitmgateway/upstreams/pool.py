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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.schema import option, positive


@dataclass(frozen=True)
class PoolSettings:
    """A serviceEndpoint's ``pool``."""

    max_connections: int = option("maxConnections", 1024, parse=positive)
    """Upstream connections open to one address at once. High by default: a connection cannot go
    from one client to another here, so each request of a client beyond the bound costs a new
    connection (and another client's); the idle timeout does the everyday work."""
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
    """The upstream connections open to one address. Requests waiting for room are served first
    come, first served: each connection that goes hands its room to the oldest waiter."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.open: dict[str, OpenConnection] = {}
        """By mitmproxy's server connection id."""
        self.opening = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def used(self) -> int:
        return len(self.open) + self.opening

    async def reserve(self, timeout: float) -> bool:
        """Room for one more connection, made or waited for; False if none came in `timeout`."""
        if self.used < self.settings.max_connections and not self._waiting:
            self.opening += 1
            return True
        room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(room)
        self._make_room()
        try:
            await asyncio.wait_for(asyncio.shield(room), timeout)
        except TimeoutError:
            if room.done():  # handed over just as the wait ran out: take it
                return True
            room.cancel()
            self._waiting.remove(room)
            return False
        except asyncio.CancelledError:  # the client went away while waiting
            if room.done() and not room.cancelled():
                self.failed()  # its room goes to the next
            else:
                room.cancel()
                self._waiting.remove(room)
            raise
        return True  # `opening` was counted when it was handed over

    def connected(self, server_id: str, connection: OpenConnection) -> None:
        self.opening = max(0, self.opening - 1)
        self.open[server_id] = connection

    def failed(self) -> None:
        self.opening = max(0, self.opening - 1)
        self._hand_over()

    def disconnected(self, server_id: str) -> None:
        if self.open.pop(server_id, None) is not None:
            self._hand_over()

    def close_idle(self, server_id: str | None, even_if_busy: bool = False) -> bool:
        """Close a connection its client has nothing in flight on (or, `even_if_busy`, one done
        with); it is counted until it is gone (`disconnected`), so that the upstream never holds
        more than the bound, not even for a moment."""
        connection = self.open.get(server_id) if server_id is not None else None
        if connection is None or connection.closing:
            return False
        if not even_if_busy and connection.idle_for(time.monotonic()) is None:
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

    def _hand_over(self) -> None:
        """Room freed: the oldest waiter takes it."""
        while self._waiting and self.used < self.settings.max_connections:
            room = self._waiting.popleft()
            if not room.done():
                self.opening += 1
                room.set_result(None)
        self._make_room()

    def _make_room(self) -> None:
        """Close as many idle connections as requests wait for (beyond those closing already)."""
        closing = sum(1 for c in self.open.values() if c.closing)
        for _ in range(len(self._waiting) - closing):
            if not self.close_idle(self._longest_idle()):
                return

    def _longest_idle(self) -> str | None:
        now = time.monotonic()
        idle = [(c.idle_for(now), server_id) for server_id, c in self.open.items()]
        return max(((t, s) for t, s in idle if t is not None), default=(None, None))[1]
