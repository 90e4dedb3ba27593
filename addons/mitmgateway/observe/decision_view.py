"""mitmweb's "Gateway" content view: what the gateway decided about a flow, as the client saw it.

mitmweb lists a proxied flow under its upstream and never shows `flow.metadata`; this view puts
the decision beside each message of a gateway flow (in the view menu of the Request and Response
tabs): the Host and path the client asked for, the apiEndpoint and pipeline, what answered and
why, or where it was proxied. For the gateway's own answers (a 401, a 429, a cached hit) mitmweb
shows it by default, since their bodies say less than the decision does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mitmproxy import contentviews, http
from mitmproxy.contentviews.base import TViewLine, TViewResult

VIEW_NAME = "Gateway"
_OWN_ANSWER_PRIORITY = 2.0
"""Above every built-in view (JSON's is 1): mitmweb's Auto shows this one for the gateway's answers."""


def why(record: dict[str, Any]) -> str | None:
    """The reason behind a step's answer (the record holds them all), in a few words."""
    if reason := record.get("jwtFailure"):
        return f"token {reason}"
    if reason := record.get("authFailure"):
        return f"credential {reason}"
    if missing := record.get("missingScopes"):
        return f"missing scopes {', '.join(missing)}"
    if record.get("rateLimitStore") == "unavailable":
        return "rate-limit store unavailable"
    return None


def _record(flow: Any) -> dict[str, Any] | None:
    record = flow.metadata.get("gateway") if isinstance(flow, http.HTTPFlow) else None
    return record if isinstance(record, dict) else None


def decision_lines(flow: http.HTTPFlow, record: dict[str, Any]) -> list[tuple[str, str]]:
    """The decision as (label, value) pairs, in the order a reader asks."""
    origin = record.get("origin", {})
    rows = [("client asked", f"{flow.request.method} {origin.get('host', '')}{origin.get('path', '')}")]
    if "path" in origin and origin.get("target") != origin["path"]:
        rows.append(("target as sent", repr(origin.get("target"))))
    if record.get("client"):
        rows.append(("client", record["client"]))
    rows.append(("apiEndpoint", record.get("apiEndpoint") or "none matched"))
    if record.get("pipeline"):
        rows.append(("pipeline", record["pipeline"]))
    if answered_by := record.get("answeredBy"):
        status = flow.response.status_code if flow.response else "no response"
        reason = why(record)
        rows.append(("answered by", f"{answered_by} → {status}" + (f" ({reason})" if reason else "")))
    elif record.get("upstream"):
        rows.append(("proxied to", record["upstream"]))
    if consumer := record.get("consumer"):
        rows.append(("consumer", str(consumer)))
    elif (user := record.get("user")) and "sub" in user:
        rows.append(("token subject", str(user["sub"])))
    for label, key in (("cache", "cache"), ("request id", "requestId"), ("traceparent", "traceparent")):
        if record.get(key):
            rows.append((label, str(record[key])))
    return rows


class DecisionView(contentviews.View):
    name = VIEW_NAME

    def install(self) -> None:
        # One gateway view: one left by an earlier load of the gateway's code (a host that never
        # called its `done`) gives way to this one.
        if (earlier := contentviews.get(VIEW_NAME)) is not None:
            contentviews.remove(earlier)
        contentviews.add(self)

    def uninstall(self) -> None:
        if self in contentviews.views:
            contentviews.remove(self)

    def __call__(self, data: bytes, *, flow: Any = None, **unknown: Any) -> TViewResult:
        record = _record(flow)
        if record is None:
            return "not a gateway flow", iter([[("text", "The gateway made no decision about this flow.")]])
        return "gateway decision", self._lines(flow, record, data)

    @staticmethod
    def _lines(flow: http.HTTPFlow, record: dict[str, Any], data: bytes) -> Iterator[TViewLine]:
        for label, value in decision_lines(flow, record):
            yield [("header", f"{label}: "), ("text", value)]
        if data:
            yield []
            for line in data.decode("utf-8", "replace").splitlines():
                yield [("text", line)]

    def render_priority(
        self, data: bytes, *, flow: Any = None, http_message: http.Message | None = None, **unknown: Any
    ) -> float:
        record = _record(flow)
        own_answer = record is not None and record.get("answeredBy") and http_message is flow.response
        return _OWN_ANSWER_PRIORITY if own_answer else 0
