"""Rate-limit stores: shared counters in a real redis-server, failure modes, algorithms, bounds."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow
from harness import wait_until
from mitmgateway.stores import StoreSettings, open_store
from mitmgateway.stores.memory import MemoryStore

PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"


def limited(max_: int, window_ms: int, algorithm: str = "fixed-window") -> str:
    return f"- rate-limit: [{{action: {{max: {max_}, windowMs: {window_ms}, algorithm: {algorithm}}}}}]"


def redis_store(url: str, fail_open: bool = True) -> str:
    return (
        f"rateLimitStore: {{type: redis, url: '{url}', failOpen: {str(fail_open).lower()}, timeoutMs: 200}}\n"
    )


def test_two_gateways_sharing_redis_enforce_one_limit(start_gateway, upstreams, redis_server):
    config = one_pipeline(
        upstreams["customers"].url, f"{limited(3, 30_000)}\n{PROXY}", extra=redis_store(redis_server.url)
    )
    first = start_gateway(config, name="first.yml")
    second = start_gateway(config, name="second.yml", runner="mitmgateway")
    statuses = [gateway.send("/").status for _ in range(5) for gateway in (first, second)]
    assert statuses.count(200) == 3, statuses
    assert statuses.count(429) == 7, statuses


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_down_fails_open_or_closed_and_recovers(start_gateway, upstreams, redis_server, fail_open):
    config = one_pipeline(
        upstreams["customers"].url,
        f"{limited(1, 60_000)}\n{PROXY}",
        extra=redis_store(redis_server.url, fail_open),
    )
    gateway = start_gateway(config)
    assert [gateway.send("/").status for _ in range(2)] == [200, 429]

    redis_server.stop()
    down = [gateway.send("/") for _ in range(3)]
    if fail_open:
        assert [r.status for r in down] == [200, 200, 200]
        assert "letting requests through uncounted" in gateway.log()
    else:
        assert [r.status for r in down] == [503, 503, 503]
        assert down[0].text == "Service Unavailable"
        assert "answering 503" in gateway.log()
    assert gateway.log().count("unavailable") == 1, "an outage is logged once"

    redis_server.start()  # empty: the counters died with it
    assert wait_until(lambda: gateway.send("/").status == 200, timeout=10)
    assert gateway.send("/").status == 429
    assert wait_until(lambda: "is back" in gateway.log())


def _at_window_offset(window_ms: int, offset_ms: int) -> None:
    """Sleep until `offset_ms` into the next window aligned on multiples of `window_ms`."""
    now_ms = time.time() * 1000
    time.sleep(((offset_ms - now_ms % window_ms) % window_ms) / 1000)


async def _edge_burst(hit, max_: int = 3) -> list[bool]:  # type: ignore[no-untyped-def]
    """One hit early in a 1 s window, max - 1 late in it, then max just after it: which pass?

    A fixed window (anchored at the first hit) lets all of them through: twice max in 0.2 s.
    """
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _at_window_offset, 1000, 20)
    started = time.monotonic()
    allowed = [await hit() <= max_]
    await asyncio.sleep(0.85)
    allowed += [await hit() <= max_ for _ in range(max_ - 1)]
    await asyncio.sleep(started + 1.05 - time.monotonic())
    return allowed + [await hit() <= max_ for _ in range(max_)]


def _memory_hits(algorithm: str):  # type: ignore[no-untyped-def]
    store = MemoryStore(100)

    async def hit() -> int:
        return store.hit("client", 1000, algorithm, 3, time.time()).count  # type: ignore[arg-type]

    return hit


def _redis_hits(url: str, algorithm: str):  # type: ignore[no-untyped-def]
    store = open_store(StoreSettings(type="redis", url=url, namespace=f"test-{algorithm}"))

    async def hit() -> int:
        result = await store.hit("client", 1000, algorithm, 3, time.time())  # type: ignore[arg-type, misc]
        assert result is not None
        return result.count

    return hit


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_sliding_window_blocks_the_edge_burst_fixed_window_allows(store, redis_server):
    def hits(algorithm: str):  # type: ignore[no-untyped-def]
        return _memory_hits(algorithm) if store == "memory" else _redis_hits(redis_server.url, algorithm)

    assert asyncio.run(_edge_burst(hits("fixed-window"))) == [True] * 6
    assert asyncio.run(_edge_burst(hits("sliding-window"))) == [True, True, True, True, False, False]


def test_redis_fixed_window_counts_and_expires(redis_server):
    async def main() -> None:
        store = open_store(StoreSettings(type="redis", url=redis_server.url, namespace="test"))
        hits = [await store.hit("client", 300, "fixed-window", 5, time.time()) for _ in range(3)]
        assert [h.count for h in hits if h] == [1, 2, 3]
        assert all(h is not None and 0 < h.reset_after <= 0.3 for h in hits)
        await asyncio.sleep(0.35)
        again = await store.hit("client", 300, "fixed-window", 5, time.time())
        assert again is not None and again.count == 1

    asyncio.run(main())


def test_memory_store_stays_within_its_bound(caplog):
    store = MemoryStore(1000)
    with caplog.at_level(logging.WARNING, logger="mitmgateway"):
        for i in range(1_000_000):
            store.hit(f"client-{i}", 60_000, "fixed-window", 5, 1000.0)
    assert len(store.entries) <= 1000
    warnings = [r for r in caplog.records if "memory store is full" in r.message]
    assert len(warnings) == 1
    # The newest clients are the ones kept.
    assert store.hit("client-999999", 60_000, "fixed-window", 5, 1000.0).count == 2


def test_delay_after_slows_requests_past_it(tmp_path):
    config = one_pipeline(
        "http://127.0.0.1:9", "- rate-limit: [{action: {max: 10, delayAfter: 1, delayMs: 300}}]\n" + PROXY
    ).replace("{port}", "8080")

    async def main() -> list[float]:
        durations = []
        with gateway_for(tmp_path, config) as gateway:
            for _ in range(3):
                flow = make_flow()
                started = time.monotonic()
                pending = gateway.requestheaders(flow)
                if pending is not None:
                    await pending
                assert flow.response is None
                durations.append(time.monotonic() - started)
        return durations

    first, second, third = asyncio.run(main())
    assert first < 0.25 <= 0.3 <= second < 0.6 <= third


def test_rate_limit_by_a_verified_claim(tmp_path, rsa_keys):
    from mint_token import mint

    steps = (
        f"- jwt: [{{action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false}}}}]\n"
        "- rate-limit: [{action: {max: 1, rateLimitBy: 'user:${req.user.sub}'}}]\n" + PROXY
    )
    config = one_pipeline("http://127.0.0.1:9", steps).replace("{port}", "8080")
    alice, bob = (mint(rsa_keys[0], name) for name in ("alice", "bob"))

    def status(token: str, peer: str) -> int:
        flow = make_flow(headers={"Authorization": f"Bearer {token}"}, peer=peer)
        gateway.requestheaders(flow)
        return flow.response.status_code if flow.response else 200

    with gateway_for(tmp_path, config) as gateway:
        # One user from two addresses is one client; two users from one address are two.
        assert status(alice, "192.0.2.1") == 200
        assert status(alice, "192.0.2.2") == 429
        assert status(bob, "192.0.2.1") == 200


def test_a_hung_redis_costs_at_most_timeout_ms(start_gateway, upstreams, redis_server):
    config = one_pipeline(
        upstreams["customers"].url, f"{limited(1, 60_000)}\n{PROXY}", extra=redis_store(redis_server.url)
    )
    gateway = start_gateway(config)
    assert gateway.send("/").status == 200
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        replies = [gateway.send("/") for _ in range(3)]
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert [r.status for r in replies] == [200, 200, 200]  # failOpen, after timeoutMs each
    assert wait_until(lambda: "unavailable (TimeoutError)" in gateway.log())
    assert wait_until(lambda: gateway.send("/").status == 429, timeout=10)


def test_express_gateway_system_config_selects_redis(tmp_path, redis_server):
    from mitmgateway.config.assemble import load_config
    from mitmgateway.policies import StepState
    from mitmgateway.stores.redis_store import RedisStore

    (tmp_path / "system.config.yml").write_text(
        f"db:\n  redis:\n    host: 127.0.0.1\n    port: {redis_server.port}\n    namespace: EG\n"
    )
    config_file = tmp_path / "gateway.config.yml"
    config_file.write_text(one_pipeline("http://127.0.0.1:9", f"{limited(1, 1000)}\n{PROXY}"))
    config_file.write_text(config_file.read_text().replace("{port}", "8080"))
    store = load_config(config_file, StepState()).pipelines["api"].steps[0].policy.store
    assert isinstance(store, RedisStore)
    assert (store.url, store.namespace) == (redis_server.url, "EG")

    (tmp_path / "system.config.yml").write_text("db:\n  redis:\n    emulate: true\n")
    store = load_config(config_file, StepState()).pipelines["api"].steps[0].policy.store
    assert isinstance(store, MemoryStore)

    from mitmgateway.config import ConfigError

    for wrong, reason in [
        ("db:\n  redis: [1, 2]\n", "system.config.yml: db.redis: must be a mapping"),
        ("db:\n  redis: {port: six}\n", "system.config.yml: db.redis: port and db must be numbers"),
    ]:
        (tmp_path / "system.config.yml").write_text(wrong)
        with pytest.raises(ConfigError) as info:
            load_config(config_file, StepState())
        assert reason in str(info.value)


@pytest.mark.parametrize(
    "current,previous,elapsed",
    [(11, 0, 100), (4, 9, 300), (10, 10, 0), (3, 20, 900), (1, 15, 10), (25, 25, 999)],
)
def test_sliding_retry_after_is_when_a_request_fits_again(current, previous, elapsed):
    from mitmgateway.stores.base import sliding_count, sliding_hit

    window, limit = 10_000, 10

    def count_of_next_request_at(t: float) -> int:
        if t < window:
            return sliding_count(current + 1, previous, t, window)
        return sliding_count(1, current, t - window, window)

    wait_ms = sliding_hit(current, previous, elapsed, window, limit).reset_after * 1000
    assert count_of_next_request_at(elapsed + wait_ms + 1) <= limit
    if wait_ms > 2:
        assert count_of_next_request_at(elapsed + wait_ms - 2) > limit, "no later than needed"


@pytest.mark.parametrize("algorithm", ["fixed-window", "sliding-window"])
def test_a_memory_window_starts_afresh_when_the_clock_goes_back(algorithm):
    # Windows go by the requests' wall-clock time: a clock stepped back an hour must not hold a
    # client's window (and its 429s) for that hour.
    store = MemoryStore(100)
    assert [store.hit("client", 1000, algorithm, 2, 7200.5).count for _ in range(3)] == [1, 2, 3]
    assert store.hit("client", 1000, algorithm, 2, 3600.5).count == 1
