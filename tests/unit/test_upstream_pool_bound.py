"""The bookkeeping of upstream connections per address (upstreams/pool.py), on its own."""

from __future__ import annotations

import asyncio
import contextlib
import time

from OpenSSL import SSL

from certificates import CertificateAuthority
from mitmgateway.mitm.sockets import _RecordFraming
from mitmgateway.upstreams.pool import AddressPool, ClientActivity, OpenConnection, PoolSettings


def test_at_the_bound_the_longest_idle_goes_first_and_is_counted_until_gone():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=2, idle_timeout_ms=60_000))
        closed: list[str] = []
        busy, idle_long, idle_short = ClientActivity({"f1"}), ClientActivity(), ClientActivity()
        idle_long.idle_since -= 10
        for name, activity in (("a", busy), ("b", idle_long)):
            assert await pool.reserve(timeout=1)
            pool.connected(name, OpenConnection(lambda name=name: closed.append(name), activity))
        waiting = asyncio.ensure_future(pool.reserve(timeout=1))
        await asyncio.sleep(0.05)
        assert closed == ["b"] and not waiting.done(), "b closes, and still counts until it is gone"
        pool.disconnected("b")
        assert await waiting and pool.used == 2
        pool.connected("c", OpenConnection(lambda: closed.append("c"), idle_short))
        # c, idle, is closed for the next request; until mitmproxy says it is gone that request
        # waits, and gives up at its timeout.
        started = time.monotonic()
        assert not await pool.reserve(timeout=0.2)
        assert closed == ["b", "c"] and time.monotonic() - started >= 0.2

    asyncio.run(scenario())


def test_connections_idle_past_the_timeout_are_the_expired_ones():
    pool = AddressPool(PoolSettings(max_connections=10, idle_timeout_ms=1000))
    old, recent, busy = ClientActivity(), ClientActivity(), ClientActivity({"flow"})
    old.idle_since -= 2
    for name, activity in (("old", old), ("recent", recent), ("busy", busy)):
        pool.opening += 1
        pool.connected(name, OpenConnection(lambda: None, activity))
    assert pool.expired(time.monotonic()) == ["old"]


def test_waiting_requests_get_room_first_come_first_served():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=1, idle_timeout_ms=60_000))
        assert await pool.reserve(timeout=1)
        pool.connected("a", OpenConnection(lambda: None, ClientActivity({"busy"})))
        order: list[str] = []

        async def wait(name: str) -> None:
            if await pool.reserve(timeout=2):
                order.append(name)

        first = asyncio.ensure_future(wait("first"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(wait("second"))
        await asyncio.sleep(0.01)
        pool.disconnected("a")  # room for one: the first to ask
        await asyncio.sleep(0.01)
        assert order == ["first"] and not second.done()
        pool.failed()  # the first's connection failed: its room goes to the second
        await asyncio.gather(first, second)
        assert order == ["first", "second"]

    asyncio.run(scenario())


def test_a_request_given_up_while_waiting_leaves_no_room_taken():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=1, idle_timeout_ms=60_000))
        assert await pool.reserve(timeout=1)
        pool.connected("a", OpenConnection(lambda: None, ClientActivity({"busy"})))
        gone = asyncio.ensure_future(pool.reserve(timeout=5))
        handed = asyncio.ensure_future(pool.reserve(timeout=5))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client disconnected while it waited
        await asyncio.sleep(0.01)
        pool.disconnected("a")
        assert await handed and pool.used == 1, "the room went to the one still waiting"
        pool.failed()  # that one's connection failed: no room is left taken
        assert pool.used == 0 and not pool._waiting

    asyncio.run(scenario())


class FakeSocket:
    """A parked socket as the pool sees one (mitm/sockets.py's ParkedSocket makes real ones)."""

    def __init__(self, name: str, usable: bool = True) -> None:
        self.name = name
        self.last_used = time.monotonic()
        self._usable = usable
        self.closed = False

    def usable(self) -> bool:
        return self._usable and not self.closed

    def close(self) -> None:
        self.closed = True


def taking(socket: FakeSocket, released: list) -> OpenConnection:  # type: ignore[type-arg]
    """A connection whose socket can be taken; `released` collects the callbacks to call when its
    client lets go of it (as mitmproxy's task ending does)."""

    def detach(on_released) -> bool:  # type: ignore[no-untyped-def]
        released.append(lambda: on_released(socket))
        return True

    return OpenConnection(socket.close, ClientActivity(), detach, reusable=True)


def test_a_parked_socket_goes_to_the_next_connection_and_keeps_its_room():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=1, idle_timeout_ms=60_000))
        room = await pool.reserve(timeout=1)
        assert room is not None and room.socket is None, "nothing parked: a new connection"
        released: list = []  # type: ignore[type-arg]
        socket = FakeSocket("a")
        pool.connected("a", taking(socket, released))
        assert pool.park("a")
        assert pool.used == 1 and not pool.parked, "on its way: counted, not yet handed out"
        released.pop()()
        assert list(pool.parked) == [socket] and pool.used == 1
        room = await pool.reserve(timeout=1)
        assert room is not None and room.socket is socket and pool.used == 1
        assert not socket.closed

    asyncio.run(scenario())


def test_a_waiting_request_takes_the_socket_of_the_client_idle_the_longest():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=1, idle_timeout_ms=60_000))
        assert await pool.reserve(timeout=1)
        released: list = []  # type: ignore[type-arg]
        socket = FakeSocket("idle client's")
        pool.connected("a", taking(socket, released))
        waiting = asyncio.ensure_future(pool.reserve(timeout=1))
        await asyncio.sleep(0.01)
        assert len(released) == 1 and not waiting.done(), "taken from its client, not closed"
        released.pop()()
        room = await waiting
        assert room is not None and room.socket is socket and not socket.closed
        assert pool.used == 1 and not pool.parked

    asyncio.run(scenario())


def test_parked_sockets_closed_by_the_upstream_or_idle_too_long_are_never_handed_out():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=3, idle_timeout_ms=1000))
        stale, fresh = FakeSocket("stale"), FakeSocket("ok")
        closed_by_upstream = FakeSocket("gone", usable=False)
        stale.last_used -= 2
        pool.opening = 3
        for socket in (fresh, stale, closed_by_upstream):  # the last parked is taken first
            pool.opening -= 1
            pool._park(socket)
        room = await pool.reserve(timeout=1)
        assert room is not None and room.socket is fresh
        assert stale.closed and closed_by_upstream.closed and pool.used == 1
        pool.failed()
        pool._park(stale := FakeSocket("stale"))
        stale.last_used -= 2
        assert pool.expired(time.monotonic()) == [] and stale.closed and pool.used == 0

    asyncio.run(scenario())


def test_a_socket_given_to_a_request_that_went_away_is_parked_again():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=1, idle_timeout_ms=60_000))
        socket = FakeSocket("a")
        pool._park(socket)
        room = await pool.reserve(timeout=1)
        assert room is not None and room.socket is socket
        pool.give_back(room)
        assert list(pool.parked) == [socket] and pool.used == 1 and not socket.closed

    asyncio.run(scenario())


def test_a_connection_whose_exchange_may_go_on_is_not_taken_and_a_closed_pool_parks_nothing():
    async def scenario() -> None:
        pool = AddressPool(PoolSettings(max_connections=2, idle_timeout_ms=60_000))
        released: list = []  # type: ignore[type-arg]
        assert await pool.reserve(timeout=1)
        after_1xx = taking(FakeSocket("a"), released)
        after_1xx.reusable = False  # (what the response hook says after a 103, say)
        pool.connected("a", after_1xx)
        assert not pool.park("a") and not released
        assert await pool.reserve(timeout=1)
        socket = FakeSocket("b")
        pool.connected("b", taking(socket, released))
        assert pool.park("b")
        pool.close()  # the gateway unloads before the socket was let go of
        released.pop()()
        assert socket.closed and not pool.parked

    asyncio.run(scenario())


def test_an_exchange_ends_for_the_next_client_only_where_the_upstream_answer_does():
    from mitmproxy.test import tflow, tutils

    from mitmgateway.hooks.upstream_connections import exchange_ended

    def flow(method: str = "GET", status: int = 200, **headers: str) -> object:
        f = tflow.tflow(req=tutils.treq(method=method.encode()), resp=tutils.tresp(status_code=status))
        f.response.headers.clear()
        f.response.headers.update(headers)
        return f

    assert exchange_ended(flow())
    assert exchange_ended(flow(status=304))
    assert exchange_ended(flow("HEAD", **{"content-length": "0"}))
    assert not exchange_ended(flow(status=103)), "the final answer is still to come"
    assert not exchange_ended(flow("HEAD", **{"content-length": "12"})), "12 bytes may yet follow"
    assert not exchange_ended(flow(status=204, **{"transfer-encoding": "chunked"}))
    assert not exchange_ended(flow(status=401, **{"www-authenticate": "NTLM"})), "the connection is the login"
    no_answer = tflow.tflow()
    assert not exchange_ended(no_answer)


def test_the_tls_record_framing_is_followed_across_any_split(tmp_path):
    # Real records, each what an OpenSSL server sends for one write; only where one ends may a
    # TLS upstream socket be handed on (what arrived of a record in part stays inside OpenSSL).
    issued = CertificateAuthority(tmp_path).issue("upstream", "127.0.0.1")
    server_context = SSL.Context(SSL.TLS_METHOD)
    server_context.use_certificate_file(str(issued.cert_file))
    server_context.use_privatekey_file(str(issued.key_file))
    server, client = SSL.Connection(server_context), SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(4):  # the handshake, its messages carried by hand
        for side, other in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                while True:
                    other.bio_write(side.bio_read(65536))
    records = []
    for size in (16_000, 5, 9_000):
        server.sendall(b"x" * size)
        records.append(server.bio_read(65536))
    wire = b"".join(records)
    ends = {sum(len(r) for r in records[: i + 1]) for i in range(len(records))}
    for chunk in (1, 2, 5, 7, 4096):
        framing = _RecordFraming()
        for at in range(0, len(wire), chunk):
            framing.feed(wire[at : at + chunk])
            fed = min(at + chunk, len(wire))
            assert framing.between_records == (fed in ends), (chunk, fed)
