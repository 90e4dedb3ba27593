"""The rate-limit store interface, its settings, and the two counting algorithms.

A store counts one hit for a key and says how many hits the key's window now holds:

- ``fixed-window`` (Express Gateway's): a key's window starts with its first hit and lasts
  ``windowMs``; the count is the hits since.
- ``sliding-window``: windows aligned on multiples of ``windowMs``; the count is this window's hits
  plus the previous window's, weighted by how much of it still lies within ``windowMs`` of now.
  A client that spent its limit at the end of one window is not given a whole new one at the
  start of the next (fixed windows allow twice max across that edge).

Every hit counts, refused ones included (as in Express Gateway). A memory store answers at once;
the redis store answers with an awaitable.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

from ..config.errors import ConfigError, KeyPath
from ..config.schema import check_type, option, parse_fields, positive

Algorithm = Literal["fixed-window", "sliding-window"]


@dataclass(frozen=True, slots=True)
class Hit:
    count: int
    """Hits the window holds, this one included."""
    reset_after: float
    """Seconds until a request would be within the limit again."""


class StoreUnavailable(Exception):
    """The shared store cannot be reached and the settings say to fail closed."""


def sliding_count(current: int, previous: int, elapsed_ms: float, window_ms: int) -> int:
    weight = max(0.0, (window_ms - elapsed_ms) / window_ms)
    return current + math.floor(previous * weight)


def sliding_hit(current: int, previous: int, elapsed_ms: float, window_ms: int, limit: int) -> Hit:
    """The count now, and how long until one more request would count no more than `limit`."""
    count = sliding_count(current, previous, elapsed_ms, window_ms)
    room = limit - current - 1  # what the previous window's weighted hits may still add
    if room >= 0:
        # Within this window, once previous * (window - elapsed) / window drops below room + 1.
        until = window_ms - (room + 1) * window_ms / previous if previous else 0.0
        return Hit(count, max(0.0, until - elapsed_ms) / 1000)
    # Not before the next window, once this window's hits weigh less than limit there.
    until = window_ms - limit * window_ms / current
    return Hit(count, (window_ms - elapsed_ms + max(0.0, until)) / 1000)


class RateLimitStore(ABC):
    @abstractmethod
    def hit(
        self, key: str, window_ms: int, algorithm: Algorithm, limit: int, now: float
    ) -> Hit | Awaitable[Hit | None]:
        """Count a hit at `now` (the request's time, epoch seconds; a shared store may go by its
        own clock). An awaitable's None means: store unreachable, fail open (let it through)."""

    def close(self) -> None:  # noqa: B027 (most stores hold nothing to release)
        """Release connections: the config that used this store was replaced."""


def _store_type(value: Any, path: KeyPath) -> str:
    kind = check_type(str, value, path)
    if kind not in ("memory", "redis"):
        raise ConfigError(path, f"must be memory or redis, got {kind!r}")
    return kind


@dataclass(frozen=True)
class StoreSettings:
    """``rateLimitStore`` in gateway.config.yml."""

    type: str = option("type", "memory", parse=_store_type)
    url: str | None = option("url", None)
    fail_open: bool = option("failOpen", True)
    timeout_ms: int = option("timeoutMs", 50, parse=positive)
    max_keys: int = option("maxKeys", 100_000, parse=positive)
    namespace: str = option("namespace", "mitmgateway")
    """Prefix of every Redis key: gateways with the same namespace and the same pipelines share
    counters; give different gateways sharing one Redis their own."""

    def identity(self) -> tuple[object, ...]:
        """What the store's counters depend on: a reload changing anything else keeps them."""
        if self.type == "memory":
            return ("memory", self.max_keys)
        return ("redis", self.url, self.namespace, self.timeout_ms, self.fail_open)


def parse_store_settings(raw: Any, path: KeyPath) -> StoreSettings:
    settings = parse_fields(StoreSettings, raw, path)
    if settings.type == "redis" and not settings.url:
        raise ConfigError(path.key("url"), "is required with type: redis (e.g. redis://127.0.0.1:6379/0)")
    if settings.url and not settings.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            path.key("url"), f"must be a redis://, rediss:// or unix:// URL, got {settings.url!r}"
        )
    return settings
