"""W3C trace context: every request leaves the gateway with a valid ``traceparent``.

A client's traceparent is kept as sent when it is well formed (with ``tracing``, hooks/tracing.py
has already made the gateway's client span its parent); an absent or malformed one is replaced
by a new trace (and its ``tracestate`` dropped), so upstreams and the access log always see one.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from mitmproxy import http

from ..headers import header_values, remove_headers, set_headers
from ..ids import new_traceparent

# version-traceid-parentid-flags; versions after 00 may append fields, "ff" is forbidden.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16
_VENDOR_STATE = frozenset((b"tracestate",))


class TraceParent(NamedTuple):
    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: str) -> TraceParent | None:
    """A well-formed traceparent's fields; None for anything else."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceParent(int(trace_id, 16), int(parent_id, 16), bool(int(flags, 16) & 1))


def is_valid_traceparent(value: str) -> bool:
    return parse_traceparent(value) is not None


def ensure_traceparent(request: http.Request) -> str:
    """The request's traceparent, set to a new one if it had none or a malformed one."""
    values = header_values(request, b"traceparent")
    if len(values) == 1 and is_valid_traceparent(values[0]):
        return values[0]
    traceparent = new_traceparent()
    set_headers(request, ((b"traceparent", traceparent.encode()),))
    # Vendor state belongs to the trace it came with, not to the new one.
    remove_headers(request, _VENDOR_STATE)
    return traceparent
