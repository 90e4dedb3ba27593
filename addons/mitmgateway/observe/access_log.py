"""The JSON-lines access log: one line per finished request, to a file or standard output.

Each line is written with one ``write()`` on a file opened for appending, so the lines of several
workers sharing the file never interleave. Off (no work at all per request) unless the config
names a file. The file is created readable by its owner and group only, and credentials a policy
read from the query string are written as REDACTED.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from mitmproxy import http

from ..decision import Decision

logger = logging.getLogger("mitmgateway")


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 3)


def redacted(path: str, secret_params: Sequence[str]) -> str:
    """`path` with the values of its query parameters that hold credentials replaced."""
    base, _, query = path.partition("?")
    pairs = [
        (name, "REDACTED" if name in secret_params else value)
        for name, value in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{base}?{urlencode(pairs)}"


def iso_time(timestamp: float) -> str:
    """``2026-12-02T05:12:49.123Z``: an epoch time in UTC, to the millisecond."""
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp * 1000) % 1000:03d}Z"
    )


def access_record(flow: http.HTTPFlow, decision: Decision) -> dict[str, Any]:
    request, response = flow.request, flow.response
    # The path as matched and forwarded (canonical), and the target exactly as the client sent it.
    path = decision.path or request.path
    target = decision.target or path
    if secret_params := decision.secret_query_params:
        path, target = redacted(path, secret_params), redacted(target, secret_params)
    end = response.timestamp_end if response is not None else time.time()
    streamed = decision.bytes_streamed
    sent = 0 if response is None else streamed if streamed is not None else len(response.raw_content or b"")
    proxied = response is not None and decision.upstream and not decision.answered_by
    return {
        "time": iso_time(request.timestamp_start),
        "client": decision.client or flow.client_conn.peername[0],
        "host": decision.host,
        "method": request.method,
        "path": path,
        "target": target,
        "status": response.status_code if response is not None else None,
        "apiEndpoint": decision.api_endpoint,
        "pipeline": decision.pipeline,
        "answeredBy": decision.answered_by,
        "reported": [
            {"policy": policy, "status": status, "reason": reason}
            for policy, status, reason in decision.reports
        ]
        or None,
        "consumer": decision.consumer,
        "shadow": decision.shadow,
        "upstream": decision.upstream,
        "durationMs": _ms(request.timestamp_start, end),
        "upstreamMs": _ms(request.timestamp_end, response.timestamp_start) if proxied else None,  # type: ignore[union-attr]
        "bytesSent": sent,
        "requestId": decision.request_id,
        "traceparent": decision.traceparent,
        "error": flow.error.msg if flow.error else None,
    }


class StreamedBytes:
    """A response's `stream` callable that counts the bytes passing through into the decision."""

    __slots__ = ("decision",)

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        decision.bytes_streamed = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.decision.bytes_streamed = (self.decision.bytes_streamed or 0) + len(chunk)
        return chunk


class AccessLog:
    def __init__(self) -> None:
        self.target: Path | None = None
        self._fd: int | None = None

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def configure(self, target: Path | None) -> None:
        if target == self.target:
            return
        self.close()
        self.target = target
        if target is None:
            return
        if str(target) == "-":
            self._fd = sys.stdout.fileno()
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            logger.error("cannot open the access log %s: %s", target, e.strerror or e)
            self.target = None

    def write(self, flow: http.HTTPFlow, decision: Decision) -> None:
        if self._fd is None:
            return
        line = json.dumps(access_record(flow, decision), separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8", "surrogateescape"))
        except OSError as e:
            logger.warning("access log write failed: %s", e.strerror or e)

    def close(self) -> None:
        if self._fd is not None and self._fd != sys.stdout.fileno():
            os.close(self._fd)
        self._fd = None
        self.target = None
