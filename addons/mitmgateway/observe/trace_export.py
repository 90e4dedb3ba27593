"""Spans sent to an OpenTelemetry collector over OTLP/HTTP, off the event loop.

The SDK's BatchSpanProcessor queues each finished span (bounded: ``tracing.maxQueueSize``) and
a thread of its own sends them in batches through the OTLP/HTTP exporter, so a collector that is
down or slow costs requests nothing but the spans that do not fit: the oldest are dropped, and
counted here (spans submitted beyond what the queue holds, and those in batches the exporter
failed to send) for ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ..config.model import TracingSettings

BATCH_DELAY_MS = 500


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting what it is given and what it failed to send."""

    def __init__(self, exporter: SpanExporter, dropped: Callable[[int], None]) -> None:
        self.exporter = exporter
        self.dropped = dropped
        self.taken = 0
        """Spans the processor has taken from its queue (to send them)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class SpanExport:
    def __init__(self, settings: TracingSettings, dropped: Callable[[int], None]) -> None:
        self.settings = settings
        self._dropped = dropped
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint,
            headers=dict(settings.headers),
            timeout=settings.export_timeout_ms / 1000,
        )
        self._exporter = _CountingExporter(exporter, dropped)
        self._processor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=BATCH_DELAY_MS,
            max_export_batch_size=min(512, settings.max_queue_size),
        )
        self._submitted = 0

    def submit(self, spans: Sequence[ReadableSpan]) -> None:
        for span in spans:
            # The processor's queue drops its oldest span when full: that is when more were
            # submitted than it has taken out to send.
            if self._submitted - self._exporter.taken >= self.settings.max_queue_size:
                self._dropped(1)
            self._submitted += 1
            self._processor.on_end(span)

    def close(self, wait_seconds: float = 0) -> None:
        """Send what is queued and stop, in a thread: a collector that hangs holds up nothing
        beyond `wait_seconds` (the unload's grace; a config change waits for nothing)."""
        closing = threading.Thread(
            target=self._processor.shutdown, name="mitmgateway span export", daemon=True
        )
        closing.start()
        closing.join(wait_seconds)
