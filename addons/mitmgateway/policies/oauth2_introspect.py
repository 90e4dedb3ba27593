"""oauth2-introspect: a bearer token checked with the authorization server that issued it (RFC
7662 token introspection), as Express Gateway's policy does.

The token (``Authorization: Bearer``, else the ``access_token`` query parameter) is POSTed to
``endpoint`` as ``token=...&token_type_hint=access_token``, with ``authorization_value`` as the
Authorization header. An active token lets the request go on with the answer as its claims
(``sub``, ``scope``...), and its subject (``sub``, else ``client_id``, else ``username``) as the
consumer; its ``scope`` must hold every scope of the apiEndpoint (403 otherwise). No token or an
inactive one: 401, unless ``passThrough``. An endpoint that does not answer within ``timeout``:
503 with Retry-After (*ours*: Express Gateway answers 401, which tells a client its good token is
bad), or the request goes on anonymously with ``passThrough``. Answers are remembered for
``ttl`` seconds, never past the token's ``exp`` (introspection.py).
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ..answers import UNAUTHORIZED, make_answer
from ..config.errors import ConfigError, KeyPath
from ..config.schema import check_type, non_negative, option, positive
from ..context import RequestContext, claimed_scopes
from ..headers import scheme_credential
from ..introspection import Introspection, Unavailable
from ..outages import Outage
from .base import BuildContext, Policy, register_policy

UNAVAILABLE = "Service Unavailable"
SUBJECT_CLAIMS = ("sub", "client_id", "username")
"""What names the token's holder, the first one the answer has: the request's consumer."""
QUERY_PARAMETER = "access_token"
"""Where a token may also be (RFC 6750, 2.3), as Express Gateway's bearer strategy reads it."""


def _endpoint(value: Any, path: KeyPath) -> str:
    url = check_type(str, value, path)
    if not url.startswith(("https://", "http://")):
        raise ConfigError(path, f"must be an https:// (or http://) URL, got {url!r}")
    return url


@dataclass(frozen=True)
class OAuth2IntrospectAction:
    endpoint: str = option("endpoint", parse=_endpoint)
    authorization_value: str | None = option("authorization_value", None)
    """Sent as the Authorization header of each call (the gateway's own credential there)."""
    timeout: int = option("timeout", 10_000, parse=positive)
    """Milliseconds a call may take, in all."""
    ttl: int = option("ttl", 60, parse=non_negative)
    """Seconds an answer is remembered (never past the token's exp; 0: asked every time)."""
    pass_through: bool = option("passThrough", False)


@register_policy
class OAuth2IntrospectPolicy(Policy):
    name = "oauth2-introspect"
    authenticates = True
    Action = OAuth2IntrospectAction

    def __init__(self, action: OAuth2IntrospectAction, build: BuildContext) -> None:
        self.action = action
        url = action.endpoint
        outage = build.state.get(
            ("introspection outage", url), lambda: Outage(f"token introspection at {url}"), build.used_state
        )
        self.endpoint = build.step_state(
            ("oauth2-introspect", url, action.authorization_value, action.timeout, action.ttl),
            lambda: build.state.introspection_endpoint(
                url, action.authorization_value, action.timeout / 1000, action.ttl, outage
            ),
        )

    def handle(self, ctx: RequestContext) -> Coroutine[Any, Any, None] | None:
        # Both read, so that a token in the query is kept out of logs and recordings whichever
        # is used.
        in_query = ctx.query_credential(QUERY_PARAMETER)
        token = scheme_credential(ctx.header_credential("authorization") or "", "bearer") or in_query
        if not token:
            self._refuse(ctx, "missing")
            return None
        remembered = self.endpoint.remembered(token, ctx.now)
        if remembered is not None:
            self._judge(ctx, remembered)
            return None
        return self._ask(ctx, token)

    async def _ask(self, ctx: RequestContext, token: str) -> None:
        try:
            answer = await self.endpoint.ask(token, ctx.now)
        except Unavailable:
            ctx.decision.auth_failure = "introspection unavailable"
            if not self.action.pass_through:
                ctx.answer(make_answer(ctx.flow.request, 503, UNAVAILABLE, {"Retry-After": "1"}))
            return
        self._judge(ctx, answer)

    def _judge(self, ctx: RequestContext, answer: Introspection) -> None:
        if not answer.active:
            self._refuse(ctx, "inactive token")
            return
        claims = answer.claims
        ctx.user = claims
        ctx.decision.consumer = next(
            (claims[k] for k in SUBJECT_CLAIMS if isinstance(claims.get(k), str)), None
        )
        ctx.require_scopes(claimed_scopes(claims))

    def _refuse(self, ctx: RequestContext, reason: str) -> None:
        ctx.decision.auth_failure = reason
        if not self.action.pass_through:
            ctx.answer(make_answer(ctx.flow.request, 401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}))
