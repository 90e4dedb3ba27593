"""What a policy or a condition sees of one request while its pipeline runs: `RequestContext`.

Per-request state stays on the context (and, for what mitmweb should show, in ``flow.metadata``),
never in globals.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from .answers import FORBIDDEN, make_answer
from .decision import Decision, StepOutcome
from .headers import header_value

if TYPE_CHECKING:
    from .client_certificates import ClientCertificate
    from .clients import ClientIdentification
    from .consumers import Authenticated
    from .observe.timeline import Timeline
    from .pipeline import Step
    from .routing import RouteMatch
    from .upstreams.health import UpstreamTarget
    from .upstreams.mirror import MirrorTarget

ResponseCallback = Callable[[http.Response], None]
RecordedIdentity = Callable[["RequestContext", "Step"], "Awaitable[None] | None"]
"""Runs in place of an authenticating step (a replay of a request recorded without credentials)."""
Callback = Callable[[], None]


def claimed_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes an identity's claims hold: ``scope`` (space-separated, as OAuth 2.0 tokens and
    introspection answers say it) or ``scopes`` (a string or a list)."""
    scope = claims.get("scope", claims.get("scopes"))
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list):
        return frozenset(s for s in scope if isinstance(s, str))
    return frozenset()


class RequestContext:
    """What policies and conditions know about one request while its pipeline runs."""

    __slots__ = (
        "_body_callbacks",
        "_finish_callbacks",
        "_forward_callbacks",
        "_response_callbacks",
        "client",
        "client_certificate",
        "decision",
        "flow",
        "hostname",
        "mirror",
        "recorded_identity",
        "route",
        "routed",
        "target",
        "timeline",
        "unsent",
        "user",
        "wants_request_body",
    )

    def __init__(
        self,
        flow: http.HTTPFlow,
        route: RouteMatch,
        hostname: str,
        client: ClientIdentification,
        decision: Decision | None = None,
        recorded_identity: RecordedIdentity | None = None,
        unsent: bool = False,
    ) -> None:
        self.flow = flow
        self.decision = Decision.of(flow) if decision is None else decision
        """What the gateway decides about this request: policies add their findings to it."""
        self.route = route
        self.hostname = hostname
        """The Host header's name, lower-cased, without the port."""
        self.client = client
        self.client_certificate: ClientCertificate | None = None
        """The certificate the client's TLS connection presented (https.options.requestCert)."""
        self.user: Mapping[str, Any] | None = None
        """The verified identity (JWT claims) once an authentication policy has accepted one."""
        self.routed = False
        """Set by the proxy policy once the request has an upstream."""
        self.target: UpstreamTarget | None = None
        """The proxy policy's choice of upstream, which the gateway may change before connecting."""
        self.mirror: MirrorTarget | None = None
        """Where the proxy policy copies the request once the upstream has answered (hooks/mirrors.py)."""
        self._forward_callbacks: list[Callback] = []
        self._response_callbacks: list[ResponseCallback] = []
        self._finish_callbacks: list[Callback] = []
        self._body_callbacks: list[ResponseCallback] = []
        self.wants_request_body = False
        self.recorded_identity = recorded_identity
        """Stands in for each step that authenticates: a replay of a request recorded without
        its credentials applies the identity the recording kept (whatif/)."""
        self.timeline: Timeline | None = None
        """When each step ended, for a traced request (``tracing``)."""
        self.unsent = unsent
        """Only the decision is wanted: nothing this request leads to is sent (a shadow config's
        decision of a live request). Steps skip what only shapes the messages (the proxy's
        rewrite of the request), and `on_response` keeps nothing."""

    @property
    def client_ip(self) -> str:
        return self.client.ip

    @property
    def now(self) -> float:
        """The request's time (epoch seconds): what token expiry, rate-limit windows and cache
        freshness are judged by, so that a replay of a recorded request judges it as it was."""
        return self.flow.request.timestamp_start or time.time()

    def record_step(self, policy: str, outcome: StepOutcome) -> None:
        """A step's outcome, in the decision (and its end, on a traced request's timeline)."""
        self.decision.add_step(policy, outcome)
        if self.timeline is not None:
            self.timeline.step_done()

    def authenticate(self, who: Authenticated, claims: Mapping[str, Any] | None = None) -> bool:
        """Record the consumer a credential proved; False, answered 403, when it lacks a scope
        the apiEndpoint requires (all of them are required)."""
        self.user = who.as_user(claims)
        self.decision.consumer = who.consumer.id
        return self.require_scopes(who.scopes)

    def require_scopes(self, held: frozenset[str]) -> bool:
        """Whether `held` has every scope the apiEndpoint requires; if not, answered 403 and the
        missing ones recorded."""
        required = self.route.api_endpoint.scopes
        if required and not held.issuperset(required):
            self.decision.missing_scopes = sorted(set(required) - held)
            self.answer(make_answer(self.flow.request, 403, FORBIDDEN))
            return False
        return True

    def query_credential(self, name: str) -> str | None:
        """A credential from the query string; the access log then writes the parameter out
        redacted."""
        self.decision.add_secret_query_param(name)
        return self.flow.request.query.get(name)

    def header_credential(self, name: str) -> str | None:
        """A credential from a request header (a recording without credentials leaves it out)."""
        value = header_value(self.flow.request, name.lower().encode())
        if value is not None:
            self.decision.add_secret_header(name)
        return value

    def answer(self, response: http.Response) -> None:
        """End the pipeline with the gateway's own response (a refusal when it is a 4xx/5xx)."""
        self.flow.response = response

    def serve(self, response: http.Response) -> None:
        """End the pipeline with content the gateway holds for the client (a cache hit): never
        reshaped or marked as a refusal, whatever its status."""
        self.decision.served = True
        self.flow.response = response

    def on_forward(self, callback: Callback) -> None:
        """Run `callback` once the whole request has arrived and goes upstream."""
        self._forward_callbacks.append(callback)

    def on_response(self, callback: ResponseCallback) -> None:
        """Run `callback` on the response before it goes to the client (upstream's or ours):
        never, for an `unsent` one."""
        if not self.unsent:
            self._response_callbacks.append(callback)

    def on_request_body(self, callback: Callback) -> None:
        """Like `on_forward`, for a step that reads or changes the request body: the gateway then
        holds a large request until it is complete instead of streaming it upstream."""
        self.wants_request_body = True
        self._forward_callbacks.append(callback)

    def on_response_body(self, callback: ResponseCallback) -> None:
        """Run `callback` on the whole response (body read) before it goes to the client.

        Only for steps that must read or change the body: the response is then held until it is
        complete (mitmproxy buffers bodies unless told to stream them anyway)."""
        self._body_callbacks.append(callback)

    @property
    def wants_body(self) -> bool:
        return bool(self._body_callbacks)

    def body_ready(self, response: http.Response) -> None:
        for callback in self._body_callbacks:
            callback(response)

    def on_finish(self, callback: Callback) -> None:
        """Run `callback` when the exchange ends, with a response or with an error."""
        self._finish_callbacks.append(callback)

    def forwarded(self) -> None:
        for callback in self._forward_callbacks:
            callback()

    def responded(self, response: http.Response) -> None:
        for callback in self._response_callbacks:
            callback(response)
        self.finished()

    def finished(self) -> None:
        for callback in self._finish_callbacks:
            callback()


Exchanges = weakref.WeakKeyDictionary[http.HTTPFlow, RequestContext]
"""The context of each flow the gate let through, from its pipeline's end to its response."""
