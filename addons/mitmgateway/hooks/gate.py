"""The request gate: each request admitted (or refused), routed, and run through its pipeline.

What a request must be before anything judges it is the front door's (front_door.py); what each
step does is its policy's. The gate decides in this order: a config in service, no plain HTTP on
the https port, the request limits, the front door, an apiEndpoint, the pipeline; the first
refusal answers (decide.py's `refuse`) and is recorded as the decision.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import connection, http

from ..answers import BAD_REQUEST, FORBIDDEN, INTERNAL_ERROR, NOT_FOUND, make_answer
from ..client_certificates import ClientCertificates
from ..config.model import GatewayConfig, RequestLimits
from ..context import Exchanges, RecordedIdentity, RequestContext
from ..decision import Decision
from ..front_door import Refusal, admit
from ..headers import declared_length, header_value, host_header, remove_headers
from ..mitm.error_pages import ProxyErrorAnswers
from ..mitm.http1_limits import RequestLimitGuards
from ..mitm.trailers import TrailerFields
from ..observe.timeline import Timelines
from ..observe.tracing import ensure_traceparent
from ..request_limits import BODY_TOO_LARGE, refusal
from ..routing import hostname_of
from .config_service import CurrentConfig
from .decide import decide, refuse
from .listeners import on_https_port
from .upstream_connections import UpstreamConnections

logger = logging.getLogger("mitmgateway")

NO_CONFIG = "The gateway has no valid configuration."
LIMITS = "limits"
"""What answered a request over `limits`, in flow records, metrics and the access log."""
PLAIN_HTTP_ON_HTTPS_PORT = "This port speaks HTTPS."
REQUEST_TRAILERS = "Request trailer fields are not supported"


def _request_streams(request: http.Request, limits: RequestLimits) -> bool:
    """Whether a request body passes through as it comes rather than being held in memory
    (unless a step needs the whole body): a large one, or a chunked one."""
    length = declared_length(request)
    if length is not None:
        return length > limits.stream_bodies_over
    # With a body size limit, a chunked body is measured by holding it (up to the held limit).
    # An HTTP/2 body without Content-Length is held too: mitmproxy would stream it to an HTTP/1
    # upstream with no framing at all (see `request`).
    return (
        "chunked" in (header_value(request, b"transfer-encoding") or "").lower() and not limits.max_body_bytes
    )


def _refuse_body_if_answered(flow: http.HTTPFlow) -> None:
    if flow.response is not None:
        # Answered before its body: mitmproxy would still invite an `Expect: 100-continue` client
        # to send it (and then drop it, see mitm/http1_limits.py), so the expectation goes.
        flow.request.headers.pop("expect", None)


def _replayed_as_first_sent(flow: http.HTTPFlow) -> None:
    recorded = Decision.recorded(flow)
    if flow.is_replay == "request" and recorded is not None and recorded.host:
        # A replayed flow carries the upstream's Host and path: route it as first sent.
        # (Flows recorded before the front door kept only the path.)
        target = recorded.target or recorded.path or flow.request.path
        flow.request.host_header = recorded.host
        flow.request.data.path = target.encode("utf-8", "surrogateescape")


_AwaitingBody = tuple[RequestContext, RequestLimits]


class RequestGate:
    def __init__(
        self,
        current: CurrentConfig,
        exchanges: Exchanges,
        upstreams: UpstreamConnections,
        client_certificates: ClientCertificates,
        timelines: Timelines | None = None,
    ) -> None:
        self.current = current
        self.exchanges = exchanges
        self.upstreams = upstreams
        self.client_certificates = client_certificates
        self.timelines: Timelines = weakref.WeakKeyDictionary() if timelines is None else timelines
        """Traced requests' timelines (hooks/tracing.py makes them, before this addon runs)."""
        self._error_answers = ProxyErrorAnswers()
        self._request_limit_guards = RequestLimitGuards(self._error_answers.render, self._refuse_over_limit)
        self._trailer_fields = TrailerFields(self._error_answers.render)
        self._awaiting_body: weakref.WeakKeyDictionary[http.HTTPFlow, _AwaitingBody] = (
            weakref.WeakKeyDictionary()
        )
        """Requests whose pipeline reads the body: routed, their pipeline to run in `request`."""

    def load(self, loader) -> None:
        self._error_answers.install()
        self._request_limit_guards.install()
        self._trailer_fields.install()

    def done(self) -> None:
        self._error_answers.uninstall()
        self._request_limit_guards.uninstall()
        self._trailer_fields.uninstall()

    def apply(self, config: GatewayConfig, previous: GatewayConfig | None) -> None:
        self._error_answers.json_errors = config.json_errors
        self._request_limit_guards.limits = config.limits

    def client_connected(self, client: connection.Client) -> None:
        self._request_limit_guards.client_connected(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._request_limit_guards.request_started(client.id)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        self._request_limit_guards.request_started(flow.client_conn.id)
        config = self.current.config
        if config is None:
            refuse(flow, 503, NO_CONFIG, "no config")
            return None
        try:
            pending = self.judge(flow, config)
        except Exception:
            self.fail_closed(flow)
            pending = None
        if pending is not None:
            # Only a step that waits (a shared rate-limit store) makes mitmproxy await this hook.
            return self._finish_later(flow, pending)
        _refuse_body_if_answered(flow)
        return None

    def _refuse_over_limit(self, flow: http.HTTPFlow, status: int, message: str) -> None:
        """Answer a request over `limits` (its head here, or its body as it comes) and close."""
        self._awaiting_body.pop(flow, None)
        refuse(flow, status, message, LIMITS, closing=True, routed=True)

    def error(self, flow: http.HTTPFlow) -> None:
        # A request held for its body that never came whole (the client went, the stream was
        # reset): its context holds the flow, so the weak mapping alone would keep both.
        self._awaiting_body.pop(flow, None)

    def holds_for_body(self, flow: http.HTTPFlow) -> bool:
        """Whether `flow`'s pipeline waits for its body (see `judge`)."""
        return flow in self._awaiting_body

    def fail_closed(self, flow: http.HTTPFlow) -> None:
        # A request the gateway could not judge never reaches an upstream.
        # Without the query string: it may carry a credential.
        request = flow.request
        logger.exception(
            "gateway error on %s %s%s", request.method, request.host_header, request.path.partition("?")[0]
        )
        refuse(flow, 500, INTERNAL_ERROR, "gateway error")

    def judge(
        self,
        flow: http.HTTPFlow,
        config: GatewayConfig,
        recorded_identity: RecordedIdentity | None = None,
        unsent: bool = False,
    ) -> Coroutine[Any, Any, None] | None:
        """Admit, route and run the pipeline for `flow` under `config`: the request's whole
        decision, or the coroutine that completes it. (An offline replay calls it too; a shadow
        config, `unsent`, for the decision alone.)"""
        _replayed_as_first_sent(flow)
        request = flow.request
        client = config.clients.identify(flow)
        decision = Decision.begin(flow)
        decision.host, decision.target = host_header(request) or "", request.path
        decision.client, decision.traceparent = client.ip, ensure_traceparent(request)
        if config.json_errors:
            decision.json_errors = True
        if not flow.client_conn.tls and on_https_port(flow.client_conn, config.https):
            # A plain HTTP request on the https port: answered, not served (nginx does the same).
            refuse(flow, 400, PLAIN_HTTP_ON_HTTPS_PORT, "plain HTTP on the https port", closing=True)
            return None
        if (too_large := refusal(config.limits, request)) is not None:
            self._refuse_over_limit(flow, *too_large)
            return None
        try:
            admitted = admit(request, config.path_rules)
        except Refusal as e:
            # Malformed or ambiguous: nothing after it on this connection can be trusted either.
            refuse(flow, 400, BAD_REQUEST, e.reason, closing=True)
            return None
        decision.host, decision.path, decision.target = admitted.host, request.path, admitted.raw_target
        if admitted.websocket:
            decision.upgrade = "websocket"
        hostname = hostname_of(admitted.host)
        route = config.router.match(hostname, request.path, request.method)
        if route is None:
            refuse(flow, 404, NOT_FOUND, "no apiEndpoint")
            return None
        context = RequestContext(flow, route, hostname, client, decision, recorded_identity, unsent)
        if not unsent and (timeline := self.timelines.get(flow)) is not None:
            context.timeline = timeline
            timeline.route = route.path_pattern.pattern if route.path_pattern is not None else None
        if (certificate := self.client_certificates.get(flow.client_conn)) is not None:
            context.client_certificate = certificate
            decision.client_certificate = certificate.as_json()
        if route.pipeline.identity_headers:
            remove_headers(request, route.pipeline.identity_headers)
        if route.pipeline.reads_body and request.raw_content is None:
            # A condition reads the body: the pipeline runs once it has all arrived (held, not
            # streamed: within limits.maxBufferedBodyBytes, else 413; at once when its declared
            # length says so, before a client that expects 100-continue sends it).
            held = config.limits.held_body_bytes
            if held and (declared_length(request) or 0) > held:
                self._refuse_over_limit(flow, 413, BODY_TOO_LARGE)
                return None
            self._awaiting_body[flow] = context, config.limits
            return None
        return self._run_pipeline(context, config.limits)

    def _run_pipeline(
        self, context: RequestContext, limits: RequestLimits
    ) -> Coroutine[Any, Any, None] | None:
        """Run the route's pipeline and conclude; the coroutine that does, if a step waits."""
        answered_by = context.route.pipeline.run(context)
        if answered_by is not None and not isinstance(answered_by, str):
            return self._conclude_when_run(context, answered_by, limits)
        self._conclude(context, answered_by, limits)
        return None

    async def _conclude_when_run(
        self, context: RequestContext, running: Coroutine[Any, Any, str | None], limits: RequestLimits
    ) -> None:
        self._conclude(context, await running, limits)

    async def _finish_later(
        self,
        flow: http.HTTPFlow,
        pending: Coroutine[Any, Any, None],
        then: Callable[[http.HTTPFlow], None] = _refuse_body_if_answered,
    ) -> None:
        try:
            await pending
        except Exception:
            self.fail_closed(flow)
        then(flow)  # (after a failure too: it then finds the flow answered)

    def _conclude(self, context: RequestContext, answered_by: str | None, limits: RequestLimits) -> None:
        flow, route = context.flow, context.route
        if answered_by is None and not context.routed:
            # Like Express Gateway, a pipeline that neither answers nor proxies falls through to 404.
            context.answer(make_answer(flow.request, 404, NOT_FOUND))
            answered_by = "no proxy step"
        elif (
            route.api_endpoint.scopes
            and context.decision.consumer is None
            and (answered_by is None or context.decision.served)
        ):
            # Scopes need a consumer: a step that was skipped or let anonymous requests through
            # must not open a scoped endpoint.
            context.answer(make_answer(flow.request, 403, FORBIDDEN))
            answered_by = "scopes without a consumer"
        self.exchanges[flow] = context
        if context.target is not None and answered_by is None:
            self.upstreams.expect(flow.client_conn.id, context.target)
        if (
            answered_by is None
            and not route.pipeline.reads_body  # (held for its conditions, it has all come)
            and not context.wants_request_body
            and _request_streams(flow.request, limits)
        ):
            flow.request.stream = True
        # (A shadow config's decision is never shown: the serving one is, with the shadow's.)
        decide(
            flow, answered_by, route.api_endpoint_name, route.pipeline.name, context.user, not context.unsent
        )

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        waiting = self._awaiting_body.pop(flow, None)
        if waiting is not None and flow.response is None:
            try:
                pending = self._run_pipeline(*waiting)
            except Exception:
                self.fail_closed(flow)
                return None
            if pending is not None:
                return self._finish_later(flow, pending, then=self._forward)
        self._forward(flow)
        return None

    def _forward(self, flow: http.HTTPFlow) -> None:
        """What the steps asked for once the whole request has arrived, and it goes upstream."""
        context = self.exchanges.get(flow)
        if context is None or flow.response is not None:
            return
        request = flow.request
        if request.trailers and not request.stream:
            # HTTP/2 request trailers: an HTTP/1 upstream cannot take them after a Content-Length
            # body (and mitmproxy's HTTP/1 sender fails on them), so nothing is forwarded.
            del self.exchanges[flow]
            context.finished()
            refuse(flow, 400, REQUEST_TRAILERS, "request trailers", closing=True, routed=True)
            return
        context.forwarded()
        if request.is_http2 and request.raw_content and "content-length" not in request.headers:
            # HTTP/2 frames its body itself; mitmproxy sends it on to an HTTP/1 upstream as is,
            # which could not tell where it ends.
            request.headers["content-length"] = str(len(request.raw_content))
