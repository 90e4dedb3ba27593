"""The shared store: counters in Redis, so every gateway process counting a client agrees.

One round trip per hit: a Lua script increments the key and sets its expiry atomically (no two
gateways can both see "first hit"). Keys are ``NAMESPACE:STEP:CLIENT`` (a long client key is
hashed, so a huge header cannot make a huge key); the namespace separates gateways sharing one
Redis. A standalone Redis (or a primary), not a Redis Cluster.

Redis down or slower than ``timeoutMs``: with ``failOpen`` the request goes through uncounted,
else it is answered 503; either way the outage is logged once, and its end too. Each hit tries
Redis again, so the gateway uses it as soon as it is back, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..outages import Outage
from .base import Algorithm, Hit, RateLimitStore, StoreSettings, StoreUnavailable, sliding_hit

MAX_CONNECTIONS = 64
MAX_KEY_LENGTH = 200


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


FIXED_WINDOW = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""

# Redis' own clock, so that gateways on several machines agree on the window boundaries.
SLIDING_WINDOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
local current_key = KEYS[1] .. ':' .. string.format('%d', index)
local count = redis.call('INCR', current_key)
if count == 1 then redis.call('PEXPIRE', current_key, 2 * window) end
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%d', index - 1)) or '0')
return {count, previous, now - index * window}
"""


class RedisStore(RateLimitStore):
    def __init__(self, settings: StoreSettings) -> None:
        timeout = settings.timeout_ms / 1000
        self.timeout = timeout
        self.fail_open = settings.fail_open
        self.namespace = settings.namespace
        self.url = settings.url or ""
        self.client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # timeoutMs is the whole budget: no retries, and a bounded pool (beyond it, an
            # error, hence failOpen's answer, rather than a reconnect storm).
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
        )
        self.scripts = {
            "fixed-window": self.client.register_script(FIXED_WINDOW),
            "sliding-window": self.client.register_script(SLIDING_WINDOW),
        }
        self.outage = Outage(f"rate-limit store {without_password(self.url)}")

    def hit(
        self, key: str, window_ms: int, algorithm: Algorithm, limit: int, now: float
    ) -> Coroutine[Any, Any, Hit | None]:
        if len(key) > MAX_KEY_LENGTH:
            key = key[:64] + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return self._hit(f"{self.namespace}:{key}", window_ms, algorithm, limit)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: the process is ending
            asyncio.get_running_loop().create_task(self.client.aclose())

    async def _hit(self, key: str, window_ms: int, algorithm: Algorithm, limit: int) -> Hit | None:
        try:
            reply = await asyncio.wait_for(
                self.scripts[algorithm](keys=[key], args=[window_ms]), self.timeout
            )
        except (TimeoutError, RedisError, OSError) as e:
            consequence = "letting requests through uncounted" if self.fail_open else "answering 503"
            self.outage.failed(e, f"{consequence} until it is back")
            if self.fail_open:
                return None
            raise StoreUnavailable(str(e)) from e
        self.outage.recovered()
        if algorithm == "fixed-window":
            count, ttl_ms = reply
            return Hit(int(count), int(ttl_ms) / 1000)
        current, previous, elapsed = (int(v) for v in reply)
        return sliding_hit(current, previous, elapsed, window_ms, limit)
