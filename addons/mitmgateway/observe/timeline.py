"""What the gateway notes of a traced request while it runs (``tracing``): its trace's ids, chosen
as it comes in, and when each pipeline step ended. observe/spans.py makes the spans from it once
the request has ended; nothing here needs the OpenTelemetry SDK, which is imported only when a
config asks for tracing.
"""

from __future__ import annotations

import secrets
import time
import weakref
from dataclasses import dataclass

from mitmproxy import http


def new_span_id() -> int:
    return secrets.randbits(64) or 1


def new_trace_id() -> int:
    return secrets.randbits(128) or 1


@dataclass(frozen=True, slots=True)
class TraceIds:
    """The ids of one request's trace, chosen when it came in."""

    trace_id: int
    parent_id: int | None
    """The client's span (from its traceparent); None: the gateway's span is the trace's root."""
    sampled: bool
    server_span_id: int
    client_span_id: int

    @classmethod
    def choose(cls, trace_id: int, parent_id: int | None, sampled: bool) -> TraceIds:
        return cls(trace_id, parent_id, sampled, new_span_id(), new_span_id())

    @property
    def upstream_traceparent(self) -> str:
        """What the upstream is sent: the client span as its parent."""
        return f"00-{self.trace_id:032x}-{self.client_span_id:016x}-{'01' if self.sampled else '00'}"


class Timeline:
    """When each pipeline step of a traced request ended (it started when the one before ended,
    or the pipeline did), in nanoseconds since the epoch; the trace's ids; and the path pattern
    the request was routed by."""

    __slots__ = ("events", "ids", "mark", "route", "steps")

    def __init__(self, ids: TraceIds) -> None:
        self.ids = ids
        self.mark = time.time_ns()
        self.steps: list[tuple[int, int]] = []
        self.route: str | None = None
        self.events: list[tuple[int, str, int, dict[str, str | int | float]]] = []
        """``(step index, name, time, attributes)``: what a step waited on (a store, a fetch)."""

    def pipeline_started(self) -> None:
        self.mark = time.time_ns()

    def note(self, name: str, started: int, **attributes: str | int | float) -> None:
        """Something the running step waited on since `started` (time.time_ns()): an event on
        its span, with how long it took."""
        now = time.time_ns()
        attributes["duration_ms"] = round((now - started) / 1e6, 3)
        self.events.append((len(self.steps), name, now, attributes))

    def step_done(self) -> None:
        now = time.time_ns()
        self.steps.append((self.mark, now))
        self.mark = now


Timelines = weakref.WeakKeyDictionary[http.HTTPFlow, Timeline]
