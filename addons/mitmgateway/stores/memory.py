"""The default store: counters in this process, in one bounded cachetools map.

Each key's entry expires with its window; when ``maxKeys`` entries are live, adding one evicts the
entry that has gone longest without a hit (its client starts a new window on its next request),
and the first such eviction is logged once. Memory therefore stays bounded however many distinct
clients (or spoofed keys) arrive. A hit is a dict lookup and a heap push (amortized O(log n)).
"""

from __future__ import annotations

import logging
from typing import Any

from cachetools import TLRUCache

from .base import Algorithm, Hit, RateLimitStore, sliding_hit

logger = logging.getLogger("mitmgateway")


class _Entries(TLRUCache):
    """A TLRU map that says, once, when it starts evicting live entries to stay in bounds.

    Its clock is the time of the request being counted (`now`), not the machine's: a replay of
    recorded requests counts them as they were counted when they came."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize, ttu=lambda _key, entry, _now: entry.expires, timer=self._clock)
        self.now = 0.0
        self.warned = False

    def _clock(self) -> float:
        return self.now

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        if not self.warned:
            self.warned = True
            logger.warning(
                "rate-limit memory store is full (%d keys): evicting the least recently seen; "
                "their clients start new windows (raise rateLimitStore.maxKeys if this is real traffic)",
                self.maxsize,
            )
        return item


class _FixedWindow:
    __slots__ = ("count", "expires")

    def __init__(self, expires: float) -> None:
        self.count = 0
        self.expires = expires


class _SlidingWindow:
    __slots__ = ("current", "expires", "index", "previous")

    def __init__(self, index: int, expires: float) -> None:
        self.index = index
        self.current = 0
        self.previous = 0
        self.expires = expires


class MemoryStore(RateLimitStore):
    def __init__(self, max_keys: int) -> None:
        self.entries = _Entries(max_keys)

    def hit(self, key: str, window_ms: int, algorithm: Algorithm, limit: int, now: float) -> Hit:
        self.entries.now = now
        if algorithm == "fixed-window":
            window = self.entries.get(key)
            if window is None or window.expires - now > window_ms / 1000:
                # New, or the clock went back (a window never outlasts its length).
                window = _FixedWindow(now + window_ms / 1000)
            window.count += 1
            self.entries[key] = window  # a hit makes it the most recently used
            return Hit(window.count, window.expires - now)
        now_ms = now * 1000
        index, elapsed = divmod(now_ms, window_ms)
        sliding = self.entries.get(key)
        if sliding is None or sliding.index < index - 1 or sliding.index > index:
            # New, idle for a whole window, or the clock went back: start afresh.
            sliding = _SlidingWindow(int(index), 0.0)
        elif sliding.index == index - 1:
            sliding.index, sliding.previous, sliding.current = int(index), sliding.current, 0
        sliding.current += 1
        # Kept while the previous window can still weigh: until the end of the next one.
        sliding.expires = now + (2 * window_ms - elapsed) / 1000
        self.entries[key] = sliding
        return sliding_hit(sliding.current, sliding.previous, elapsed, window_ms, limit)
