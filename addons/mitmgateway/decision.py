"""Each flow's decision: one typed record, written by the gate and the steps, read by metrics,
the access log and mitmweb, and compared, one flow's against another's, by `differences`.

Its data is ``flow.metadata["gateway"]``, a plain dict, so that it is saved with the flow, comes
back with a replay, and any tool that reads flows can show it; `Decision` is its typed face:
each field the gateway writes is declared here once, with its type, its key in the dict and its
value while unset. Two decisions compare equal when their data does, and `differences` says
field by field how they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar, overload

from mitmproxy import http

T = TypeVar("T")
METADATA_KEY = "gateway"
StepOutcome = Literal["skipped", "passed", "answered", "reported"]
"""A pipeline step's outcome: its condition was false, it let the request go on, it answered, or
(a step in ``mode: report``) it would have answered and the request went on."""


class _Field(Generic[T]):
    """``data[key]``, or `unset` while the record has no such key (never a mutable value: the
    ``add_*`` methods of `Decision` append to a field's own list)."""

    __slots__ = ("key", "unset")

    def __init__(self, key: str, unset: T) -> None:
        self.key = key
        self.unset = unset

    def _holder(self, data: dict[str, Any], writing: bool) -> dict[str, Any]:
        """The mapping the key is in."""
        return data

    @overload
    def __get__(self, decision: None, owner: type) -> _Field[T]: ...
    @overload
    def __get__(self, decision: Decision, owner: type) -> T: ...
    def __get__(self, decision: Decision | None, owner: type) -> T | _Field[T]:
        if decision is None:
            return self
        return self._holder(decision.data, False).get(self.key, self.unset)

    def __set__(self, decision: Decision, value: T) -> None:
        self._holder(decision.data, True)[self.key] = value


class _OriginField(_Field[T]):
    """One of ``data["origin"]``'s keys: the request as the client sent it."""

    __slots__ = ()

    def _holder(self, data: dict[str, Any], writing: bool) -> dict[str, Any]:
        return data.setdefault("origin", {}) if writing else data.get("origin", {})


class Decision:
    """What the gateway decided about one request, and what it found on the way."""

    __slots__ = ("data",)

    # The request as the client sent it, and as the front door read it.
    host: _OriginField[str | None] = _OriginField("host", None)
    """The authority the client asked for (its Host, or an absolute-form target's)."""
    target: _OriginField[str | None] = _OriginField("target", None)
    """The request target exactly as sent."""
    path: _OriginField[str | None] = _OriginField("path", None)
    """The canonical target routing saw (None: the front door refused the request)."""
    client: _Field[str | None] = _Field("client", None)
    client_certificate: _Field[dict[str, Any] | None] = _Field("clientCertificate", None)
    """``{subject, verified}``: the certificate the client's TLS connection presented."""
    """The client's address (what a trusted proxy's X-Forwarded-For says, else the peer)."""
    traceparent: _Field[str | None] = _Field("traceparent", None)
    json_errors: _Field[bool] = _Field("jsonErrors", False)
    upgrade: _Field[str | None] = _Field("upgrade", None)
    """``websocket``: the front door let a WebSocket handshake through."""

    # Where it went, and what answered.
    api_endpoint: _Field[str | None] = _Field("apiEndpoint", None)
    pipeline: _Field[str | None] = _Field("pipeline", None)
    steps: _Field[Sequence[Sequence[str]]] = _Field("steps", ())
    """``[policy, outcome]`` for each step the pipeline reached, in order (see `StepOutcome`)."""
    answered_by: _Field[str | None] = _Field("answeredBy", None)
    """The policy, or the gate's check, that answered; None when the request was proxied."""
    served: _Field[bool] = _Field("served", False)
    """The answer is content the gateway held for the client (a cache hit), not a refusal."""
    refusal: _Field[str | None] = _Field("refusal", None)
    """Why a step refused, where its answer alone does not say."""
    reports: _Field[Sequence[Sequence[Any]]] = _Field("reports", ())
    """``[policy, status, reason]`` for each answer a step in ``mode: report`` would have given
    (what it found, as `why` says it, or None)."""

    # Who the client is.
    user: _Field[dict[str, Any] | None] = _Field("user", None)
    """The verified claims (or the consumer's) once an auth step accepted a credential."""
    consumer: _Field[str | None] = _Field("consumer", None)
    missing_scopes: _Field[list[str] | None] = _Field("missingScopes", None)
    jwt_failure: _Field[str | None] = _Field("jwtFailure", None)
    auth_failure: _Field[str | None] = _Field("authFailure", None)
    secret_query_params: _Field[Sequence[str]] = _Field("secretQueryParams", ())
    """Query parameters a credential was read from: the access log writes them redacted."""
    secret_headers: _Field[Sequence[str]] = _Field("secretHeaders", ())
    """Request headers a credential was read from."""

    # What the other steps found.
    rate_limit_store: _Field[str | None] = _Field("rateLimitStore", None)
    cache: _Field[str | None] = _Field("cache", None)

    # The upstream.
    service_endpoint: _Field[str | None] = _Field("serviceEndpoint", None)
    upstream: _Field[str | None] = _Field("upstream", None)
    """``host:port`` of the url the proxy step chose, or moved the request to."""
    request_id: _Field[str | None] = _Field("requestId", None)
    upstream_failures: _Field[Sequence[Sequence[str]]] = _Field("upstreamFailures", ())
    """``[url, reason]`` for each failure of an upstream this request saw."""
    upstream_down: _Field[str | None] = _Field("upstreamDown", None)
    upstream_up: _Field[str | None] = _Field("upstreamUp", None)
    upstream_retried: _Field[bool] = _Field("upstreamRetried", False)
    upstream_timed_out: _Field[bool] = _Field("upstreamTimedOut", False)
    upstream_switched_protocols: _Field[bool] = _Field("upstreamSwitchedProtocols", False)
    shadow: _Field[dict[str, Any] | None] = _Field("shadow", None)
    """The shadow config's decision (``gateway_shadow``): status, apiEndpoint, pipeline, policy..."""
    shadow_differs: _Field[bool] = _Field("shadowDiffers", False)
    mirror: _Field[dict[str, Any] | None] = _Field("mirror", None)
    """The mirror's result (``service``, ``result``, ``reason``), once its answer is in: after
    the flow ended, so never in the access log."""
    mirror_of: _Field[str | None] = _Field("mirrorOf", None)
    """On a mirror's answer shown in mitmweb: the id of the flow it copies."""
    bytes_streamed: _Field[int | None] = _Field("bytesStreamed", None)
    """Response body bytes passed on while streaming (the body itself is not kept)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data

    @classmethod
    def of(cls, flow: http.HTTPFlow) -> Decision:
        """The decision recorded on `flow` (an empty one to fill, if none is)."""
        return cls(flow.metadata.setdefault(METADATA_KEY, {}))

    @classmethod
    def begin(cls, flow: http.HTTPFlow) -> Decision:
        """A new decision for `flow`, replacing whatever it carried (a replayed flow's)."""
        decision = flow.metadata[METADATA_KEY] = {}
        return cls(decision)

    @classmethod
    def recorded(cls, flow: http.HTTPFlow) -> Decision | None:
        """The decision on `flow`, or None for a flow the gateway never judged."""
        data = flow.metadata.get(METADATA_KEY)
        return cls(data) if isinstance(data, dict) else None

    def add_step(self, policy: str, outcome: StepOutcome) -> None:
        self.data.setdefault("steps", []).append([policy, outcome])

    def add_report(self, policy: str, status: int, reason: str | None) -> None:
        self.data.setdefault("reports", []).append([policy, status, reason])

    def why(self) -> str | None:
        """The reason behind a step's answer (the record holds them all), in a few words."""
        if reason := self.jwt_failure:
            return f"token {reason}"
        if reason := self.auth_failure:
            return f"credential {reason}"
        if missing := self.missing_scopes:
            return f"missing scopes {', '.join(missing)}"
        if self.rate_limit_store == "unavailable":
            return "rate-limit store unavailable"
        return None

    def add_upstream_failure(self, url: str, reason: str) -> None:
        self.data.setdefault("upstreamFailures", []).append([url, reason])

    def add_secret_query_param(self, name: str) -> None:
        self.data.setdefault("secretQueryParams", []).append(name)

    def add_secret_header(self, name: str) -> None:
        self.data.setdefault("secretHeaders", []).append(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # a record being written is not a key

    def __repr__(self) -> str:
        return f"Decision({self.data!r})"

    def differences(self, other: Decision) -> dict[str, tuple[Any, Any]]:
        """``{key: (this value, the other's)}`` for each key whose values differ."""
        keys = self.data.keys() | other.data.keys()
        return {
            k: (self.data.get(k), other.data.get(k))
            for k in sorted(keys)
            if self.data.get(k) != other.data.get(k)
        }
