"""Where rate-limit counters live: in this process (memory) or shared between gateways (redis)."""

from .base import Algorithm, Hit, RateLimitStore, StoreSettings, StoreUnavailable, open_store

__all__ = [
    "Algorithm",
    "Hit",
    "RateLimitStore",
    "StoreSettings",
    "StoreUnavailable",
    "open_store",
]
