"""A finished request's spans, made from what the gateway recorded of it: one server span, a
child for each pipeline step the request reached, and a client span for the upstream exchange.

Nothing is built while the request runs: the pipeline notes when each step ended (`Timeline`),
the gateway when the request went upstream, and once the flow has ended its spans are made from
that, its decision record and mitmproxy's own timestamps, with the ids chosen when it came in
(`TraceIds`: the upstream was sent the client span's id before the span existed). Attribute
names follow OpenTelemetry's semantic conventions for HTTP servers and clients; the gateway's own
are under ``mitmgateway.``.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import time

from mitmproxy import http
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..decision import Decision
from ..runner import WORKER_ENV
from .timeline import Timeline, TraceIds, new_span_id

SCOPE = InstrumentationScope("mitmgateway")
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)


def process_resource(service_name: str) -> Resource:
    """This gateway process, as its spans name it (OTEL_RESOURCE_ATTRIBUTES adds to it)."""
    try:
        version = importlib.metadata.version("mitmgateway")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    attributes: dict[str, str | int] = {
        "service.name": service_name,
        "service.version": version,
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
    }
    if slot := os.environ.get(WORKER_ENV):
        attributes["mitmgateway.worker"] = int(slot)
    return Resource.create(attributes)


def _failure(flow: http.HTTPFlow) -> str:
    return flow.error.msg if flow.error is not None else "no response"


def _ns(seconds: float | None) -> int:
    return int(seconds * 1e9) if seconds else time.time_ns()


class SpanBuilder:
    """Spans of finished flows, for one resource (the gateway process) and config."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def _span(
        self,
        ids: TraceIds,
        name: str,
        span_id: int,
        parent_id: int | None,
        kind: SpanKind,
        start: int,
        end: int,
        attributes: dict[str, object],
        status: Status | None = None,
        events: tuple[Event, ...] = (),
        remote_parent: bool = False,
    ) -> ReadableSpan:
        flags = _SAMPLED if ids.sampled else _NOT_SAMPLED
        parent = (
            None
            if parent_id is None
            else SpanContext(ids.trace_id, parent_id, is_remote=remote_parent, trace_flags=flags)
        )
        return ReadableSpan(
            name,
            context=SpanContext(ids.trace_id, span_id, is_remote=False, trace_flags=flags),
            parent=parent,
            resource=self.resource,
            attributes=attributes,  # type: ignore[arg-type]
            events=events,
            kind=kind,
            status=status or Status(StatusCode.UNSET),
            start_time=start,
            end_time=max(start, end),
            instrumentation_scope=SCOPE,
        )

    def spans(self, flow: http.HTTPFlow, decision: Decision, timeline: Timeline) -> list[ReadableSpan]:
        request, response = flow.request, flow.response
        ids, route = timeline.ids, timeline.route
        status = response.status_code if response is not None else None
        start = _ns(request.timestamp_start)
        end = _ns(response.timestamp_end if response is not None else None)
        server: dict[str, object] = {
            "http.request.method": request.method,
            # As the client sent them: the proxy step has rewritten the request for the upstream.
            "url.scheme": "https" if flow.client_conn.tls else "http",
            "url.path": (decision.path or request.path).partition("?")[0],
            "server.address": decision.host or request.host,
            "network.protocol.version": request.http_version.removeprefix("HTTP/"),
            "client.address": decision.client or (flow.client_conn.peername or ("",))[0],
        }
        if route is not None:
            server["http.route"] = route
        if status is not None:
            server["http.response.status_code"] = status
        if user_agent := request.headers.get("user-agent"):
            server["user_agent.original"] = user_agent
        for key, value in (
            ("mitmgateway.request_id", decision.request_id),
            ("mitmgateway.api_endpoint", decision.api_endpoint),
            ("mitmgateway.pipeline", decision.pipeline),
            ("mitmgateway.answered_by", decision.answered_by),
        ):
            if value is not None:
                server[key] = value
        failed = status is None or status >= 500
        if failed:
            server["error.type"] = str(status) if status is not None else _failure(flow)
        spans = [
            self._span(
                ids,
                f"{request.method} {route}" if route else request.method,
                ids.server_span_id,
                ids.parent_id,
                SpanKind.SERVER,
                start,
                end,
                server,
                Status(StatusCode.ERROR) if failed else None,
                remote_parent=True,
            )
        ]
        spans += self._step_spans(ids, decision, timeline, status)
        # Only an exchange that happened, or was tried: not one whose client left before its
        # held body had come.
        tried = response is not None or flow.server_conn.timestamp_start or decision.upstream_failures
        if decision.answered_by is None and decision.upstream and tried:
            # It went upstream when the pipeline was done, or (a body held for the steps, or
            # not streamed) once the body had all come.
            sent = timeline.mark if request.stream else max(timeline.mark, _ns(request.timestamp_end))
            spans.append(self._client_span(flow, decision, ids, sent, end))
        return spans

    def _step_spans(
        self, ids: TraceIds, decision: Decision, timeline: Timeline, status: int | None
    ) -> list[ReadableSpan]:
        reports = iter(decision.reports)
        spans = []
        for index, ((policy, outcome), (start, end)) in enumerate(
            zip(decision.steps, timeline.steps, strict=False)
        ):
            attributes: dict[str, object] = {
                "mitmgateway.policy": policy,
                "mitmgateway.step.index": index,
                "mitmgateway.step.outcome": outcome,
            }
            if outcome == "answered" and status is not None:
                attributes["http.response.status_code"] = status
            elif outcome == "reported":
                reported = next(reports, None)
                if reported is not None:
                    attributes["mitmgateway.step.reported_status"] = reported[1]
            if policy == "rate-limit" and decision.rate_limit_store:
                attributes["mitmgateway.rate_limit_store"] = decision.rate_limit_store
            noted = [Event(name, attrs, at) for step, name, at, attrs in timeline.events if step == index]
            if policy == "cache" and decision.cache:
                attributes["mitmgateway.cache"] = decision.cache
                noted.append(Event(f"cache {decision.cache}", {}, end))
            spans.append(
                self._span(
                    ids,
                    policy,
                    new_span_id(),
                    ids.server_span_id,
                    SpanKind.INTERNAL,
                    start,
                    end,
                    attributes,
                    events=tuple(noted),
                )
            )
        return spans

    def _client_span(
        self, flow: http.HTTPFlow, decision: Decision, ids: TraceIds, start: int, end: int
    ) -> ReadableSpan:
        request, response = flow.request, flow.response
        host, _, port = (decision.upstream or "").rpartition(":")
        authority = f"[{host}]:{port}" if ":" in host else decision.upstream
        attributes: dict[str, object] = {
            "http.request.method": request.method,
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
            "url.full": f"{request.scheme}://{authority}{request.path.partition('?')[0]}",
        }
        if decision.service_endpoint:
            attributes["mitmgateway.service_endpoint"] = decision.service_endpoint
        if decision.upstream_retried:  # (moved before anything was sent: not a resend)
            attributes["mitmgateway.upstream_moved"] = True
        events = tuple(
            Event("upstream failure", {"url.full": url, "error.type": reason}, start)
            for url, reason in decision.upstream_failures
        )
        failure = None
        if response is None or decision.upstream_timed_out:
            failure = "timeout" if decision.upstream_timed_out else _failure(flow)
        elif response.status_code >= 400:
            failure = str(response.status_code)
        if response is not None:
            attributes["http.response.status_code"] = response.status_code
        if failure is not None:
            attributes["error.type"] = failure
        return self._span(
            ids,
            request.method,
            ids.client_span_id,
            ids.server_span_id,
            SpanKind.CLIENT,
            start,
            end,
            attributes,
            Status(StatusCode.ERROR) if failure is not None else None,
            events,
        )
