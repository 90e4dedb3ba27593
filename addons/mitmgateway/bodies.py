"""Message bodies as a step reads them: decoded within a bound, parsed as JSON or a form.

A small body may decode to a great deal (gzip compresses a thousandfold), so nothing is decoded
past the size its reader would hold anyway.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from mitmproxy import http

from .headers import header_value

STREAM_BODIES_OVER = 1 << 20
"""Bodies larger than this pass through as they come, never held whole (unless a step needs them)."""

NOT_PARSED = object()
"""A body that is neither JSON nor a form (or could not be decoded within its bound)."""


class BoundedCopy:
    """A message's `stream` callable that passes each chunk on (through `inner`, if any) and keeps
    a copy of the body while it is at most `limit` bytes: what a mirror compares of an answer that
    streamed through, never held."""

    __slots__ = ("complete", "inner", "limit", "parts", "size")

    def __init__(self, limit: int, inner: Callable[[bytes], bytes] | None) -> None:
        self.limit = limit
        self.inner = inner
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            self.complete = True  # (mitmproxy's call at the body's end)
        elif self.size <= self.limit:
            self.size += len(chunk)
            if self.size <= self.limit:
                self.parts.append(chunk)
            else:
                self.parts.clear()
        return chunk if self.inner is None else self.inner(chunk)

    @property
    def body(self) -> bytes | None:
        """The whole body, once it has passed, if it was at most `limit` bytes."""
        return b"".join(self.parts) if self.complete and self.size <= self.limit else None


def clipped(text: str) -> str:
    """A value (a body's part, a header) as a log line or a report names it: 40 characters at most."""
    return text if len(text) <= 40 else text[:37] + "..."


def decoded(message: http.Message, limit: int) -> bytes | None:
    """The body without its gzip or deflate encoding, if that is at most `limit` bytes; None when
    it is not, is in another encoding, or fails to decode."""
    raw = message.raw_content or b""
    encoding = (header_value(message, b"content-encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return raw if len(raw) <= limit else None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    # wbits 47: a gzip or zlib header, whichever it has; deflate is also sent raw (no header).
    for wbits in (47, -15) if encoding == "deflate" else (47,):
        try:
            decompressor = zlib.decompressobj(wbits)
            body = decompressor.decompress(raw, limit + 1)
        except zlib.error:
            continue
        return body if len(body) <= limit and not decompressor.unconsumed_tail else None
    return None


def parse_json(body: bytes) -> Any:
    """The JSON document `body` holds, or NOT_PARSED."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # (a document nested deeper than Python recurses)
        return NOT_PARSED


def parsed_request_body(request: http.Request, limit: int) -> Any:
    """The request's body as Express Gateway's body parsers read it, by its Content-Type: JSON
    (``application/json``, ``application/*+json``) or a form (``application/x-www-form-urlencoded``:
    each field's value, a list where a field repeats); NOT_PARSED for anything else."""
    content_type = (header_value(request, b"content-type") or "").partition(";")[0].strip().lower()
    is_json = content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
    if not is_json and content_type != "application/x-www-form-urlencoded":
        return NOT_PARSED
    body = decoded(request, limit)
    if body is None:
        return NOT_PARSED
    if is_json:
        return parse_json(body)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        return NOT_PARSED
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name not in form:
            form[name] = value
        elif isinstance(form[name], list):
            form[name].append(value)
        else:
            form[name] = [form[name], value]
    return form
