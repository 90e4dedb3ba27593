"""Request limits (``limits``): header size (431), body size (413) and slow headers (408).

A complete request is checked by `refusal` in the request gate. What comes before that (a head
still arriving) and what mitmproxy buffers without bound (a body) is guarded in mitmproxy's own
layers: mitm/http1_limits.py.
"""

from __future__ import annotations

from mitmproxy import http

from .config.model import RequestLimits
from .headers import declared_length

HEADERS_TOO_LARGE = "Request Header Fields Too Large"
BODY_TOO_LARGE = "Payload Too Large"
HEADERS_TIMEOUT = "Request Timeout"


def head_size(request: http.Request) -> int:
    """The request line and headers as sent in HTTP/1 (CRLFs and ': ' included)."""
    line = len(request.data.method) + len(request.data.path) + len(request.data.http_version) + 4
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers.fields) + 2


def refusal(limits: RequestLimits, request: http.Request) -> tuple[int, str] | None:
    """431 or 413 for a request whose head is over the limits, else None."""
    if limits.max_header_bytes and head_size(request) > limits.max_header_bytes:
        return 431, HEADERS_TOO_LARGE
    if limits.max_body_bytes and (declared_length(request) or 0) > limits.max_body_bytes:
        return 413, BODY_TOO_LARGE
    return None
