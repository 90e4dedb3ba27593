"""How many connections the gateway holds to each upstream: bounded, shared between clients,
and none kept idle for long.

mitmproxy gives each client connection its own upstream connections, so without a bound an
upstream holds as many connections as the gateway has clients (10,000 idle mobile clients:
10,000 idle sockets on every service). Here, per upstream address:

- at most ``maxConnections`` are open at once;
- a client connection that ends leaves its idle upstream sockets *parked* (mitm/sockets.py), and
  the next connection to the address takes the one used last instead of connecting: a new client
  connection per request costs one upstream connection in all, not one each;
- a request that would open one more connection than the bound takes the socket of the client
  idle the longest (or closes it, if it cannot be taken), and waits when none is idle;
- a connection whose client has had no request in flight for ``idleTimeoutMs``, and a parked
  socket unused for as long, is closed. The default, 4 s, is below Node's own keep-alive timeout
  (5 s): the gateway lets go of a connection before a Node upstream does, so a request is never
  sent on a connection the upstream is closing.

A client whose upstream connection went gets another with its next request; nothing of a request
is ever sent on a closed connection (closing marks it closed at once, on the event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config.schema import option, positive


@dataclass(frozen=True)
class PoolSettings:
    """A serviceEndpoint's ``pool``."""

    max_connections: int = option("maxConnections", 1024, parse=positive)
    """Upstream connections open to one address at once. High by default: a keep-alive client
    holds its connection while it is busy, so each request of a client beyond the bound waits for
    or takes another's; parking and the idle timeout do the everyday work."""
    idle_timeout_ms: int = option("idleTimeoutMs", 4_000, parse=positive)
    """A connection whose client has sent nothing for this long is closed."""


@dataclass
class ClientActivity:
    """The requests of one client connection in flight (a WebSocket's until it ends)."""

    in_flight: set[str] = field(default_factory=set)
    idle_since: float = field(default_factory=time.monotonic)

    def idle_for(self, now: float) -> float | None:
        return None if self.in_flight else now - self.idle_since


class Socket(Protocol):
    """A parked upstream socket (mitm/sockets.py's ParkedSocket)."""

    last_used: float

    def usable(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Room:
    """Room for one more connection, and the parked socket it is to use, if any."""

    socket: Socket | None = None


@dataclass
class OpenConnection:
    close: Callable[[], None]
    activity: ClientActivity
    detach: Callable[[Callable[[Socket], None]], bool] = lambda released: False
    """Take its socket from its client, for another: given to `released` once its client's side
    has let go of it; False if it cannot be taken (not between exchanges, say)."""
    reusable: bool = False
    """Its last exchange ended where the upstream's answer ended (`exchange_ended`): nothing more
    can come on it that the next client would read as its own answer."""
    last_exchange: float = field(default_factory=time.monotonic)
    closing: bool = False
    """Closed by the pool, still counted until mitmproxy says it is gone."""

    def idle_for(self, now: float) -> float | None:
        return None if self.closing else self.activity.idle_for(now)


class AddressPool:
    """The upstream connections open to one address, and its parked sockets. Requests waiting for
    room are served first come, first served: each socket parked and each connection that goes
    hands its room to the oldest waiter."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.open: dict[str, OpenConnection] = {}
        """By mitmproxy's server connection id."""
        self.parked: deque[Socket] = deque()
        """Used last on the right: the next connection takes the one the upstream saw last."""
        self.opening = 0
        self.releasing = 0
        """Sockets taken from their clients, not yet let go of there."""
        self._waiting: deque[asyncio.Future[Room]] = deque()
        self.closed = False
        """The gateway unloaded: sockets let go of later are closed, not parked."""

    @property
    def used(self) -> int:
        return len(self.open) + self.opening + self.releasing + len(self.parked)

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    async def reserve(self, timeout: float, take_parked: bool = True) -> Room | None:
        """Room for one more connection, with a parked socket when there is one (and
        `take_parked`); made or waited for; None if none came in `timeout`."""
        if not self._waiting:
            if take_parked and (socket := self._take_parked()) is not None:
                self.opening += 1
                return Room(socket)
            if self.used < self.settings.max_connections:
                self.opening += 1
                return Room()
        room: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self._waiting.append(room)
        self._make_room()
        try:
            return await asyncio.wait_for(asyncio.shield(room), timeout)
        except TimeoutError:
            if room.done():  # handed over just as the wait ran out: take it
                return room.result()
            room.cancel()
            self._waiting.remove(room)
            return None
        except asyncio.CancelledError:  # the client went away while waiting
            if room.done() and not room.cancelled():
                self.give_back(room.result())  # its room goes to the next
            else:
                room.cancel()
                self._waiting.remove(room)
            raise
        # `opening` was counted when it was handed over

    def connected(self, server_id: str, connection: OpenConnection) -> None:
        self.opening = max(0, self.opening - 1)
        self.open[server_id] = connection

    def failed(self) -> None:
        self.opening = max(0, self.opening - 1)
        self._hand_over()

    def give_back(self, room: Room) -> None:
        """Room reserved and not used: its parked socket goes back, or its room to the next."""
        self.opening = max(0, self.opening - 1)
        if room.socket is not None:
            self._park(room.socket)
        else:
            self._hand_over()

    def disconnected(self, server_id: str) -> None:
        if self.open.pop(server_id, None) is not None:
            self._hand_over()

    def park(self, server_id: str) -> bool:
        """Take the socket of a connection whose client is done with it, for the next
        connection; False if it cannot be taken (not between exchanges, say)."""
        connection = self.open.get(server_id)
        if connection is None or connection.closing or not connection.reusable:
            return False
        last_used = connection.last_exchange
        if not connection.detach(lambda socket: self._released(socket, last_used)):
            return False
        del self.open[server_id]  # its room stays taken: the socket has it
        self.releasing += 1
        return True

    def _released(self, socket: Socket, last_used: float) -> None:
        self.releasing -= 1
        socket.last_used = last_used
        self._park(socket)

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
        """The connections idle longer than the idle timeout (parked sockets that are, or that
        the upstream closed, are closed here)."""
        limit = self.settings.idle_timeout_ms / 1000
        stale = [s for s in self.parked if now - s.last_used >= limit or not s.usable()]
        for socket in stale:
            self.parked.remove(socket)
            socket.close()
        if stale:
            self._hand_over()
        return [
            server_id
            for server_id, c in self.open.items()
            if (idle := c.idle_for(now)) is not None and idle >= limit
        ]

    def close(self) -> None:
        """Close the parked sockets, and those let go of from now on."""
        self.closed = True
        while self.parked:
            self.parked.pop().close()

    def _take_parked(self) -> Socket | None:
        limit = self.settings.idle_timeout_ms / 1000
        now = time.monotonic()
        while self.parked:
            socket = self.parked.pop()
            if socket.usable() and now - socket.last_used < limit:
                return socket
            socket.close()
        return None

    def _park(self, socket: Socket) -> None:
        """A socket free for the next connection: the oldest waiter's, or parked."""
        if self.closed:
            socket.close()
            return
        while self._waiting:
            room = self._waiting.popleft()
            if not room.done():
                self.opening += 1
                room.set_result(Room(socket))
                return
        self.parked.append(socket)

    def _hand_over(self) -> None:
        """Room freed: the oldest waiter takes it."""
        while self._waiting and self.used < self.settings.max_connections:
            room = self._waiting.popleft()
            if not room.done():
                self.opening += 1
                room.set_result(Room())
        self._make_room()

    def _make_room(self) -> None:
        """For each request waiting (beyond connections closing already), take the socket of the
        client idle the longest, or close its connection."""
        on_their_way = self.releasing + sum(1 for c in self.open.values() if c.closing)
        for _ in range(len(self._waiting) - on_their_way):
            longest_idle = self._longest_idle()
            if longest_idle is None:
                return
            if not self.park(longest_idle):
                self.close_idle(longest_idle)

    def _longest_idle(self) -> str | None:
        now = time.monotonic()
        idle = [(c.idle_for(now), server_id) for server_id, c in self.open.items()]
        return max(((t, s) for t, s in idle if t is not None), default=(None, None))[1]
