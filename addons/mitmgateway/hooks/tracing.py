"""OpenTelemetry traces (``tracing``): each request's trace ids chosen as it comes in, and its
spans exported once it has ended (observe/spans.py, observe/trace_export.py).

This addon runs before the gate: it reads the client's ``traceparent`` (a sampled one is always
honoured; without one, ``sampleRatio`` of new traces are sampled, judged on the trace id, as
OpenTelemetry's ParentBased(TraceIdRatioBased) sampler does) and replaces it with the one the
upstream gets, whose parent is the gateway's client span. The gate then finds a valid one and
keeps it (the access log shows it: the same trace id as the exported spans); its pipeline notes
each step's end on the request's `Timeline`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from mitmproxy import http

from ..config.model import GatewayConfig
from ..decision import Decision
from ..headers import header_values, remove_headers, set_headers
from ..observe.metrics import GatewayMetrics
from ..observe.timeline import Timeline, Timelines, TraceIds, new_trace_id
from ..observe.tracing import parse_traceparent

if TYPE_CHECKING:
    from ..observe.spans import SpanBuilder
    from ..observe.trace_export import SpanExport

_TRACESTATE = frozenset((b"tracestate",))
UNLOAD_FLUSH_SECONDS = 2.0


class Tracing:
    def __init__(self, timelines: Timelines, metrics: GatewayMetrics) -> None:
        self.timelines = timelines
        self.metrics = metrics
        self._export: SpanExport | None = None
        self._builder: SpanBuilder | None = None
        self._root_bound = 0
        """A new trace is sampled when its id's low 64 bits are below this (TraceIdRatioBased)."""
        self._ended: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def apply(self, config: GatewayConfig, previous: GatewayConfig | None) -> None:
        settings = config.tracing
        if self._export is not None and self._export.settings == settings:
            return
        self._stop()
        if settings is not None:
            # The SDK is imported only by a config that traces.
            from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

            from ..observe.spans import SpanBuilder, process_resource
            from ..observe.trace_export import SpanExport

            self._export = SpanExport(settings, self.metrics.spans_dropped)
            self._builder = SpanBuilder(process_resource(settings.service_name))
            self._root_bound = TraceIdRatioBased(settings.sample_ratio).bound

    def done(self) -> None:
        # Unloaded (shutdown, code reload): what is queued has a moment to go.
        self._stop(wait_seconds=UNLOAD_FLUSH_SECONDS)

    def _stop(self, wait_seconds: float = 0) -> None:
        if self._export is not None:
            self._export.close(wait_seconds)
        self._export = self._builder = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._export is None or flow.response is not None or not flow.live:
            return
        request = flow.request
        values = header_values(request, b"traceparent")
        parent = parse_traceparent(values[0]) if len(values) == 1 else None
        if parent is not None:
            ids = TraceIds.choose(parent.trace_id, parent.span_id, parent.sampled)
        else:
            trace_id = new_trace_id()
            ids = TraceIds.choose(trace_id, None, trace_id & 0xFFFF_FFFF_FFFF_FFFF < self._root_bound)
            remove_headers(request, _TRACESTATE)  # vendor state belongs to the trace it came with
        set_headers(request, ((b"traceparent", ids.upstream_traceparent.encode()),))
        if ids.sampled:  # (nothing is noted of a request that is not)
            self.timelines[flow] = Timeline(ids)

    def response(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def _end(self, flow: http.HTTPFlow) -> None:
        timeline = self.timelines.get(flow)
        if timeline is None or self._export is None or flow in self._ended:
            return
        decision = Decision.recorded(flow)
        if decision is None:
            return
        self._ended.add(flow)
        assert self._builder is not None
        self._export.submit(self._builder.spans(flow, decision, timeline))
