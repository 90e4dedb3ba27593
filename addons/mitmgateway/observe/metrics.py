"""Prometheus metrics, counted from each flow's decision record (``flow.metadata["gateway"]``).

Policies know nothing of Prometheus: they write what they decided into the record, and this
module turns finished flows into counts. The label children are cached per label values, so a
request costs a few dict lookups and increments. Each `GatewayMetrics` has its own registry (a code
reload makes a new one instead of clashing with the old in a global registry). Under ``mitmgateway
run --workers N`` the workers write to prometheus-client's multiprocess files
(PROMETHEUS_MULTIPROC_DIR, set by the pool) and the pool serves their sum.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ..decision import Decision

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _cached(factory: Callable[..., Any]) -> Callable[..., Any]:
    """`metric.labels(*values)` remembered per label values (labels() takes a lock and builds keys)."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = children.get(values)
        if found is None:
            found = children[values] = factory(*values)
        return found

    return child


class GatewayMetrics:
    def __init__(self) -> None:
        multiprocess = MULTIPROCESS_DIR_ENV in os.environ
        # In multiprocess mode values live in files; a registry would only get in the way.
        self.registry = None if multiprocess else CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "mitmgateway_requests",
            "Requests, by pipeline, the policy that answered ('proxy' when proxied) and status",
            ["pipeline", "policy", "status"],
            registry=registry,
        )
        self._request_seconds = Histogram(
            "mitmgateway_request_duration_seconds",
            "From the request's first byte to the answer's last, by pipeline",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._upstream_seconds = Histogram(
            "mitmgateway_upstream_response_seconds",
            "From the request sent upstream to the upstream's response headers",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._rate_limited = Counter(
            "mitmgateway_rate_limited", "Requests refused by rate-limit", ["pipeline"], registry=registry
        )
        self._jwt_failures = Counter(
            "mitmgateway_jwt_failures",
            "Requests whose token the jwt policy refused, by reason",
            ["pipeline", "reason"],
            registry=registry,
        )
        self._reported = Counter(
            "mitmgateway_policy_reported",
            "Answers steps in mode: report would have given (not sent), by pipeline, policy and status",
            ["pipeline", "policy", "status"],
            registry=registry,
        )
        self._shadow_differences = Counter(
            "mitmgateway_shadow_differences",
            "Requests the shadow config (gateway_shadow) decides otherwise than the serving one",
            ["serving_pipeline", "candidate_pipeline", "serving_status", "candidate_status"],
            registry=registry,
        )
        self._mirrored = Counter(
            "mitmgateway_mirror",
            "Requests copied to a proxy step's mirror, by its serviceEndpoint and result: match, "
            "mismatch (its answer differs from the primary's), error (no answer), skipped (a body "
            "over maxBodyBytes or streamed, or maxInFlight copies already on their way)",
            ["service", "result"],
            registry=registry,
        )
        self._reloads = Counter(
            "mitmgateway_config_reloads",
            "Config changes seen on disk, by result (ok or failed)",
            ["result"],
            registry=registry,
        )
        self._upstream_failures = Counter(
            "mitmgateway_upstream_failures",
            "Failed attempts to use an upstream url: connect failed, connect timeout, upstream timeout",
            ["service", "upstream", "reason"],
            registry=registry,
        )
        self._upstream_retries = Counter(
            "mitmgateway_upstream_retries",
            "Requests sent to the next url because theirs could not be connected to",
            ["service"],
            registry=registry,
        )
        self._upstream_up = Gauge(
            "mitmgateway_upstream_up",
            "0 once an upstream url is taken out of the rotation after failures, 1 once it is back",
            ["service", "upstream"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._spans_dropped = Counter(
            "mitmgateway_trace_spans_dropped",
            "Spans not exported (tracing): beyond tracing.maxQueueSize, or in a batch the collector "
            "did not take",
            registry=registry,
        )
        self._client_connections = Gauge(
            "mitmgateway_client_connections",
            "Open client connections: live (mitmproxy serves them) and resting (idle keep-alive "
            "clients held as a bare socket until they send)",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.requests = _cached(self._requests.labels)
        self.upstream_seconds = _cached(self._upstream_seconds.labels)
        self.request_seconds = _cached(self._request_seconds.labels)
        self.rate_limited = _cached(self._rate_limited.labels)
        self.jwt_failures = _cached(self._jwt_failures.labels)
        self.reported = _cached(self._reported.labels)
        self.mirrored = _cached(self._mirrored.labels)

    def shadow_difference(
        self,
        serving_pipeline: str | None,
        candidate_pipeline: str | None,
        serving: int | None,
        candidate: int | None,
    ) -> None:
        # Label values: pipeline names of the two configs, statuses: bounded.
        self._shadow_differences.labels(
            serving_pipeline or "", candidate_pipeline or "", str(serving or ""), str(candidate or "")
        ).inc()

    def spans_dropped(self, count: int) -> None:
        """(Called from the span exporter's thread too: prometheus-client's counters lock.)"""
        self._spans_dropped.inc(count)

    def client_connections(self, live: int, resting: int) -> None:
        self._client_connections.labels("live").set(live)
        self._client_connections.labels("resting").set(resting)

    def config_reloaded(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "failed").inc()

    def observe(self, flow: http.HTTPFlow, decision: Decision) -> None:
        pipeline = decision.pipeline or ""
        answered_by = decision.answered_by
        response = flow.response
        status = str(response.status_code) if response is not None else "error"
        self.requests(pipeline, answered_by or "proxy", status).inc()
        if response is not None and response.timestamp_end and flow.request.timestamp_start:
            self.request_seconds(pipeline).observe(response.timestamp_end - flow.request.timestamp_start)
        if answered_by == "rate-limit":
            self.rate_limited(pipeline).inc()
        if reason := decision.jwt_failure:
            self.jwt_failures(pipeline, reason).inc()
        for policy, would_answer, _reason in decision.reports:
            self.reported(pipeline, policy, str(would_answer)).inc()
        service = decision.service_endpoint
        if decision.upstream_failures or decision.upstream_up:
            self._observe_upstream_health(service or "", decision)
        if service and response is not None and answered_by is None:
            sent = flow.request.timestamp_end
            if sent is not None and response.timestamp_start >= sent:
                self.upstream_seconds(service).observe(response.timestamp_start - sent)

    def _observe_upstream_health(self, service: str, decision: Decision) -> None:
        for upstream, reason in decision.upstream_failures:
            self._upstream_failures.labels(service, upstream, reason).inc()
        if decision.upstream_retried:
            self._upstream_retries.labels(service).inc()
        if down := decision.upstream_down:
            self._upstream_up.labels(service, down).set(0)
        if up := decision.upstream_up:
            self._upstream_up.labels(service, up).set(1)

    def exposition(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        return collect_multiprocess(os.environ[MULTIPROCESS_DIR_ENV])


def collect_multiprocess(directory: str) -> bytes:
    """The sum of every worker's metrics (the pool's /metrics)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)
