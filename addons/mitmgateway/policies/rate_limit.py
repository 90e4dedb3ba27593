"""rate-limit: at most `max` requests per `windowMs` for each client key, counted in a store.

The store (``rateLimitStore``: memory by default, or redis shared between gateways) holds one
counter per step and client key; a client's requests to one pipeline do not use up another's.
``algorithm`` picks fixed windows (Express Gateway's) or sliding ones (see stores/base.py).
With the memory store a hit is answered at once; with redis the step awaits one round trip.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..answers import make_answer
from ..config.schema import http_status, non_negative, option, positive
from ..context import RequestContext
from ..headers import set_headers
from ..stores import Algorithm, Hit, StoreUnavailable
from ..templates import Template, parse_template
from .base import BuildContext, Policy, register_policy

logger = logging.getLogger(__name__)

STORE_UNAVAILABLE = "Service Unavailable"


@dataclass(frozen=True)
class RateLimitAction:
    max: int = option("max", 5, parse=non_negative)
    """0: no limit (Express Gateway's meaning); a delay may still apply."""
    window_ms: int = option("windowMs", 60_000, parse=positive)
    algorithm: Algorithm = option("algorithm", "fixed-window")
    rate_limit_by: Template | None = option("rateLimitBy", None, parse=parse_template)
    message: str = option("message", "Too many requests, please try again later.")
    status_code: int = option("statusCode", 429, parse=http_status)
    headers: bool = option("headers", True)
    delay_after: int | None = option("delayAfter", None, parse=non_negative)
    """Off unless set (Express Gateway delays from the second request by default); 0 is off."""
    delay_ms: int = option("delayMs", 1000, parse=non_negative)
    """0 is off, as Express Gateway users write it to turn its default one-second delay off."""

    @property
    def delays(self) -> bool:
        return bool(self.delay_after and self.delay_ms)


@register_policy
class RateLimitPolicy(Policy):
    name = "rate-limit"
    Action = RateLimitAction

    def __init__(self, action: RateLimitAction, build: BuildContext) -> None:
        self.action = action
        self.store = build.rate_limit_store
        self.delay = build.state.delay
        # Reporting only: counting, without slowing anyone or telling clients of a limit.
        self.quiet = build.reporting
        # The step's counters keep across reloads while its window and algorithm stay the same.
        self.prefix = f"{build.step_id}:{action.window_ms}:{action.algorithm}:"
        self._no_key_logged = False
        self.policy_field = f'"default";q={action.max};w={math.ceil(action.window_ms / 1000)}'

    def client_key(self, ctx: RequestContext) -> str:
        template = self.action.rate_limit_by
        if template is None:
            return ctx.client_ip
        key = template.render(ctx)
        if key is None:
            if not self._no_key_logged:
                self._no_key_logged = True
                logger.info(
                    "rateLimitBy %s has no value for a request; counting such requests by client IP",
                    template.source,
                )
            return ctx.client_ip
        return key

    def handle(self, ctx: RequestContext) -> Awaitable[None] | None:
        action = self.action
        if not action.max and not action.delays:
            return None  # neither a limit nor a delay: nothing to count
        hit = self.store.hit(
            self.prefix + self.client_key(ctx), action.window_ms, action.algorithm, action.max, ctx.now
        )
        if isinstance(hit, Hit):
            return self._decide(ctx, hit)
        return self._decide_when_counted(ctx, hit)

    async def _decide_when_counted(self, ctx: RequestContext, pending: Awaitable[Hit | None]) -> None:
        started = time.time_ns()
        try:
            hit = await pending
        except StoreUnavailable:
            ctx.decision.rate_limit_store = "unavailable"
            ctx.answer(make_answer(ctx.flow.request, 503, STORE_UNAVAILABLE, {"Retry-After": "1"}))
            return
        finally:
            if ctx.timeline is not None:
                ctx.timeline.note("rate-limit store", started)
        if hit is None:  # store unreachable, failing open
            ctx.decision.rate_limit_store = "unavailable"
            return
        delay = self._decide(ctx, hit)
        if delay is not None:
            await delay

    def _decide(self, ctx: RequestContext, hit: Hit) -> Coroutine[Any, Any, None] | None:
        action = self.action
        limit = action.max
        reset_after = max(0.0, hit.reset_after)
        headers = {}
        if action.headers and limit and not self.quiet:
            remaining = max(0, limit - hit.count)
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(math.ceil(ctx.now + reset_after)),
                # The IETF draft's fields (draft-ietf-httpapi-ratelimit-headers): quota and window,
                # then what is left and the seconds until it resets.
                "RateLimit-Policy": self.policy_field,
                "RateLimit": f'"default";r={remaining};t={math.ceil(reset_after)}',
            }
        if limit and hit.count > limit:
            headers["Retry-After"] = str(max(1, math.ceil(reset_after)))
            ctx.answer(make_answer(ctx.flow.request, action.status_code, action.message, headers))
            return None
        if headers:
            fields = tuple((n.encode(), v.encode()) for n, v in headers.items())
            ctx.on_response(lambda response: set_headers(response, fields))
        if action.delays and hit.count > (action.delay_after or 0) and not self.quiet:
            # Never past the window: a longer wait would hold the request for nothing.
            delay = (hit.count - action.delay_after) * action.delay_ms / 1000
            return self.delay(min(delay, action.window_ms / 1000))
        return None
