"""OAuth 2.0 token introspection (RFC 7662) for the oauth2-introspect policy: an authorization
server's endpoint, asked about each token it has not answered for lately.

Answers are remembered per token for the step's ``ttl``, never past the token's own ``exp``, at
most `REMEMBERED` tokens (the least recently used go first). Concurrent requests with the same
token share one call. The call is made from a worker thread and waited for at most ``timeout``:
an endpoint that is down or slow costs each request that time at most, is logged once per outage,
and is never remembered as an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from cachetools import LRUCache

from .fetching import fetch
from .outages import Outage

REMEMBERED = 10_000
"""Tokens whose answer an endpoint remembers at once."""
MAX_ANSWER_BYTES = 64 << 10

# Its own threads: a call must not wait behind other work sent to threads (password checks, JWKS).
_CALLER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="introspect")


class Unavailable(Exception):
    """The endpoint gave no usable answer in time (why)."""


@dataclass(frozen=True)
class Introspection:
    """What the authorization server said of a token."""

    active: bool
    claims: dict[str, Any]
    """The whole answer (``sub``, ``scope``, ``client_id``, ``exp``...) of an active token."""


def _answer(body: bytes) -> Introspection:
    try:
        document = json.loads(body)
    except ValueError:
        raise Unavailable("its answer is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("active"), bool):
        raise Unavailable('its answer has no "active" true or false')
    return Introspection(document["active"], document if document["active"] else {})


class IntrospectionEndpoint:
    def __init__(
        self, url: str, authorization: str | None, timeout: float, ttl: float, outage: Outage
    ) -> None:
        """`outage`: the endpoint's, shared by the steps that call it (logged once for all)."""
        self.url = url
        self.authorization = authorization
        self.timeout = timeout
        self.ttl = ttl
        self._remembered: LRUCache[str, tuple[float, Introspection]] = LRUCache(REMEMBERED)
        self._asking: dict[str, asyncio.Future[Introspection]] = {}
        self.outage = outage

    def remembered(self, token: str, now: float) -> Introspection | None:
        """The answer for `token` while it holds (`now`: the request's time)."""
        key = _key(token)
        entry = self._remembered.get(key)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._remembered[key]
            return None
        return entry[1]

    async def ask(self, token: str, now: float) -> Introspection:
        """The endpoint's answer for `token` (Unavailable: none in time)."""
        key = _key(token)
        asking = self._asking.get(key)
        if asking is None:
            asking = asyncio.ensure_future(self._call(token))
            self._asking[key] = asking
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
        answer = await asyncio.shield(asking)
        exp = answer.claims.get("exp")
        until = now + self.ttl
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = min(until, exp)
        if until > now:
            self._remembered[key] = (until, answer)
        return answer

    async def _call(self, token: str) -> Introspection:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        form = urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        request = urllib.request.Request(self.url, form, headers, method="POST")
        try:
            loop = asyncio.get_running_loop()
            body, _ = await asyncio.wait_for(
                loop.run_in_executor(_CALLER, fetch, request, self.timeout, MAX_ANSWER_BYTES), self.timeout
            )
            answer = _answer(body)
        except Exception as e:  # whatever became of the call: no answer, never a verdict on the token
            error = e if isinstance(e, Unavailable) else Unavailable(str(e) or type(e).__name__)
            self.outage.failed(error, "requests with a token it has not answered for are answered 503")
            raise error from None
        self.outage.recovered()
        return answer


def _key(token: str) -> str:
    # Not the token itself: what stays in memory proves nothing to whoever reads it.
    return hashlib.sha256(token.encode()).hexdigest()
