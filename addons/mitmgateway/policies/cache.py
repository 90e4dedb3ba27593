"""cache: answer repeated GET/HEAD requests from memory, as a shared HTTP cache would (ours).

An answer is stored when the upstream allows it: status 200, 203, 204, 301, 404 or 410; no
``Cache-Control: no-store`` or ``private``; no ``Set-Cookie``; not ``Vary: *``; a body of at most
``maxBodyBytes``. It is kept for the upstream's ``s-maxage`` or ``max-age``, else ``ttl`` seconds,
and looked up by method, host, path with query, and the request headers the upstream's ``Vary``
names. Hits carry ``Age`` and ``X-Cache: HIT``, the rest ``X-Cache: MISS``. A request with
``Authorization`` or ``Cookie`` is neither served from nor stored in the cache (another client's
answer must never reach it) unless ``cacheAuthorized: true``; ``Cache-Control: no-cache`` from the
client skips the lookup. Each step has its own cache, bounded by ``maxBytes`` and dropped when
the config reloads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cachetools import TLRUCache
from mitmproxy import http

from ..config.schema import option, positive
from ..context import RequestContext
from .base import BuildContext, Policy, register_policy

CACHEABLE_STATUSES = frozenset({200, 203, 204, 301, 404, 410})
ENTRY_OVERHEAD = 1024
MAX_VARY_RECORDS = 100_000
# Headers an upstream may act on that the key does not hold: a request carrying one is not
# served from or stored in the cache (else one client could poison the answer for all).
_UNKEYED = (
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-http-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
)
_MAX_AGE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class CacheAction:
    ttl: int = option("ttl", 60, parse=positive)
    """Seconds an answer is kept when the upstream does not say (max-age, s-maxage)."""
    max_bytes: int = option("maxBytes", 64 << 20, parse=positive)
    """Bodies (and a little for each entry) kept at most; the least recently used go first."""
    max_body_bytes: int = option("maxBodyBytes", 1 << 20, parse=positive)
    cache_authorized: bool = option("cacheAuthorized", False)


@dataclass(frozen=True)
class _Entry:
    response: http.Response
    stored: float
    expires: float


def _tokens(message: http.Message, name: str) -> set[str]:
    return {t.strip().lower() for v in message.headers.get_all(name) for t in v.split(",") if t.strip()}


def freshness(response: http.Response, default: float) -> float | None:
    """Seconds the response may be served from a shared cache, or None if it must not be."""
    if response.status_code not in CACHEABLE_STATUSES or "set-cookie" in response.headers:
        return None
    control = ",".join(response.headers.get_all("cache-control"))
    tokens = {t.strip().lower().split("=")[0] for t in control.split(",")}
    if tokens & {"no-store", "private", "no-cache"} or "*" in _tokens(response, "vary"):
        return None
    ages = dict((k.lower(), int(v)) for k, v in _MAX_AGE.findall(control))
    seconds = ages.get("s-maxage", ages.get("max-age", default))
    return float(seconds) if seconds > 0 else None


@register_policy
class CachePolicy(Policy):
    name = "cache"
    Action = CacheAction

    def __init__(self, action: CacheAction, build: BuildContext) -> None:
        self.action = action
        self.entries: TLRUCache[tuple[object, ...], _Entry] = TLRUCache(
            maxsize=action.max_bytes,
            ttu=lambda _key, entry, _now: entry.expires,
            timer=self._clock,
            getsizeof=lambda entry: len(entry.response.raw_content or b"") + ENTRY_OVERHEAD,
        )
        self.vary: dict[tuple[object, ...], tuple[str, ...]] = {}
        self.now = 0.0
        """The time of the request being looked up or stored (its clock, so that a replay of
        recorded requests finds what was fresh then)."""

    def _clock(self) -> float:
        return self.now

    def handle(self, ctx: RequestContext) -> None:
        request = ctx.flow.request
        if request.method not in ("GET", "HEAD"):
            return
        # Personal: a credential anywhere (an auth step may have removed it by now) or a cookie.
        headers = request.headers
        personal = ctx.user is not None or "authorization" in headers or "cookie" in headers
        if personal and not self.action.cache_authorized:
            return
        if any(name in headers for name in _UNKEYED):
            return
        self.now = ctx.now
        who = (ctx.decision.consumer or (ctx.user or {}).get("sub")) if personal else None
        base = (request.method, ctx.hostname, request.path, who)
        names = self.vary.get(base, ())
        key = (*base, names, *(headers.get(n) for n in names))
        entry = None if "no-cache" in _tokens(request, "cache-control") else self.entries.get(key)
        if entry is not None and entry.stored > self.now:
            entry = None  # stored "later": the clock went back, and its freshness is unknown
        if entry is not None:
            answer = entry.response.copy()
            answer.headers["Age"] = str(max(0, math.floor(self.now - entry.stored)))
            answer.headers["X-Cache"] = "HIT"
            ctx.decision.cache = "hit"
            ctx.serve(answer)
            return
        ctx.decision.cache = "miss"
        # As the client sent them: later steps change the request (Host, X-Forwarded-*...).
        sent = request.headers.copy()
        ctx.on_response(lambda response: response.headers.__setitem__("X-Cache", "MISS"))
        ctx.on_response_body(lambda response: self._store(ctx, base, response, sent))

    def _store(
        self, ctx: RequestContext, base: tuple[object, ...], response: http.Response, sent: http.Headers
    ) -> None:
        if not ctx.routed or ctx.flow.response is not response:
            return  # only the upstream's answers, never one a later step made
        seconds = freshness(response, self.action.ttl)
        content = response.raw_content
        if seconds is None or content is None or len(content) > self.action.max_body_bytes:
            return
        names = tuple(sorted(_tokens(response, "vary")))
        self.vary[base] = names
        if len(self.vary) > MAX_VARY_RECORDS:
            self.vary.clear()  # bounded: at worst a few misses, never growth without end
        stored = response.copy()
        stored.headers.pop("X-Cache", None)
        now = self.now = ctx.now
        key = (*base, names, *(sent.get(n) for n in names))
        self.entries[key] = _Entry(stored, now, now + seconds)
