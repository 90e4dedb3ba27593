"""Where rate-limit counters live: in this process (memory) or shared between gateways (redis)."""

from .base import Algorithm, Hit, RateLimitStore, StoreSettings, StoreUnavailable

__all__ = [
    "Algorithm",
    "Hit",
    "RateLimitStore",
    "StoreSettings",
    "StoreUnavailable",
    "open_store",
]


def open_store(settings: StoreSettings) -> RateLimitStore:
    if settings.type == "redis":
        from .redis_store import RedisStore  # the redis client is only imported when used

        return RedisStore(settings)
    from .memory import MemoryStore

    return MemoryStore(settings.max_keys)
