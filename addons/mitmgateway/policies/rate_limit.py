"""rate-limit: a fixed window of `max` requests per `windowMs` for each client key.

Counters live in a bounded cachetools TTLCache per pipeline step (a client's requests to one
pipeline do not use up another's); a key's window starts with its first request and the entry
expires with the window, so the lookup and the update are O(1) and memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from cachetools import TTLCache

from ..answers import make_answer
from ..config.schema import http_status, not_supported_yet, option, positive
from ..headers import set_headers
from ..pipeline import RequestContext
from ..templates import Template, parse_template
from .base import BuildContext, Policy, register_policy

logger = logging.getLogger(__name__)

MAX_CLIENT_KEYS = 100_000
"""Bound on counters kept per step; the soonest-expiring are evicted first when it is reached."""


@dataclass(frozen=True)
class RateLimitAction:
    max: int = option("max", 5, parse=positive)
    window_ms: int = option("windowMs", 60_000, parse=positive)
    rate_limit_by: Template | None = option("rateLimitBy", None, parse=parse_template)
    message: str = option("message", "Too many requests, please try again later.")
    status_code: int = option("statusCode", 429, parse=http_status)
    headers: bool = option("headers", True)
    delay_after: None = option("delayAfter", None, parse=not_supported_yet("delayAfter"))
    delay_ms: None = option("delayMs", None, parse=not_supported_yet("delayMs"))


class _Window:
    __slots__ = ("count", "reset_epoch", "reset_monotonic")

    def __init__(self, now: float, window: float) -> None:
        self.count = 0
        self.reset_monotonic = now + window
        self.reset_epoch = time.time() + window


@register_policy
class RateLimitPolicy(Policy):
    name = "rate-limit"
    Action = RateLimitAction

    def __init__(self, action: RateLimitAction, build: BuildContext) -> None:
        self.action = action
        self.window = action.window_ms / 1000
        self.windows: TTLCache[str, _Window] = build.step_state(
            (action.max, action.window_ms, action.rate_limit_by),
            lambda: TTLCache(maxsize=MAX_CLIENT_KEYS, ttl=self.window, timer=time.monotonic),
        )

    def client_key(self, ctx: RequestContext) -> str:
        template = self.action.rate_limit_by
        if template is None:
            return ctx.client_ip
        key = template.render(ctx)
        if key is None:
            logger.info("rateLimitBy has no value for this request; counting by client IP")
            return ctx.client_ip
        return key

    def handle(self, ctx: RequestContext) -> None:
        now = time.monotonic()
        key = self.client_key(ctx)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = _Window(now, self.window)
        window.count += 1
        limit = self.action.max
        if window.count > limit:
            headers = {"Retry-After": str(max(1, math.ceil(window.reset_monotonic - now)))}
            if self.action.headers:
                headers.update(self._headers(limit, window))
            ctx.answer(make_answer(ctx.flow.request, self.action.status_code, self.action.message, headers))
        elif self.action.headers:
            fields = tuple(
                (name.encode(), value.encode()) for name, value in self._headers(limit, window).items()
            )
            ctx.on_response(lambda response: set_headers(response, fields))

    @staticmethod
    def _headers(limit: int, window: _Window) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - window.count)),
            "X-RateLimit-Reset": str(math.ceil(window.reset_epoch)),
        }
