"""The bookkeeping of upstream connections per address (upstreams/pool.py), on its own."""

from __future__ import annotations

import asyncio
import time

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
