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

from ..decision import Decision
from ..routing import hostname_of

VIEW_NAME = "Gateway"
_OWN_ANSWER_PRIORITY = 2.0
"""Above every built-in view (JSON's is 1): mitmweb's Auto shows this one for the gateway's answers."""


REJECTED_MARKER = ":no_entry:"
ANSWERED_MARKER = ":zap:"
REPORTED_MARKER = ":eyes:"
"""A step in ``mode: report`` would have answered this flow."""


def reported(decision: Decision) -> str:
    """``report: would answer 401 by jwt (token expired)`` (each such answer), or nothing."""
    return "; ".join(
        f"report: would answer {status} by {policy}" + (f" ({reason})" if reason else "")
        for policy, status, reason in decision.reports
    )


def show_in_mitmweb(flow: http.HTTPFlow, decision: Decision, refused: bool) -> None:
    """The decision in mitmweb's list: the flow's comment, and a marker on the gateway's own
    answers (`refused`: a refusal, rather than content it served)."""
    where = (
        f"apiEndpoint {decision.api_endpoint} → pipeline {decision.pipeline}"
        if decision.pipeline
        else "no apiEndpoint matched"
    )
    if decision.path is not None and decision.target != decision.path:
        where += f"; target {decision.target!r} read as {decision.path!r}"
    if decision.answered_by:
        # The request never got an upstream: show it under the host the client asked for
        # rather than reverse mode's placeholder target.
        flow.request.data.host = hostname_of(flow.request.host_header or "") or flow.request.host
        status = flow.response.status_code if flow.response else ""
        reason = decision.why()
        because = f" ({reason})" if reason else ""
        flow.comment = f"gateway: {where}; answered {status} by {decision.answered_by}{because}"
        flow.marked = REJECTED_MARKER if refused else ANSWERED_MARKER
    else:
        # mitmweb lists a proxied flow under its upstream: the comment keeps the client's view.
        asked = f"{decision.host or ''}{decision.path or ''}"
        flow.comment = f"gateway: {where}; {asked} proxied to {flow.request.host}:{flow.request.port}"
    if decision.reports:
        flow.comment += f"; {reported(decision)}"
        if not flow.marked:
            flow.marked = REPORTED_MARKER


def decision_lines(flow: http.HTTPFlow, decision: Decision) -> list[tuple[str, str]]:
    """The decision as (label, value) pairs, in the order a reader asks."""
    rows = [("client asked", f"{flow.request.method} {decision.host or ''}{decision.path or ''}")]
    if decision.path is not None and decision.target != decision.path:
        rows.append(("target as sent", repr(decision.target)))
    if decision.client:
        rows.append(("client", decision.client))
    rows.append(("apiEndpoint", decision.api_endpoint or "none matched"))
    if decision.pipeline:
        rows.append(("pipeline", decision.pipeline))
    if answered_by := decision.answered_by:
        status = flow.response.status_code if flow.response else "no response"
        reason = decision.why()
        rows.append(("answered by", f"{answered_by} → {status}" + (f" ({reason})" if reason else "")))
    elif decision.upstream:
        rows.append(("proxied to", decision.upstream))
    if decision.reports:
        rows.append(("report only", reported(decision).replace("report: ", "")))
    if decision.consumer:
        rows.append(("consumer", decision.consumer))
    elif (user := decision.user) and "sub" in user:
        rows.append(("token subject", str(user["sub"])))
    for label, value in (
        ("cache", decision.cache),
        ("request id", decision.request_id),
        ("traceparent", decision.traceparent),
    ):
        if value:
            rows.append((label, value))
    return rows


def _decision(flow: Any) -> Decision | None:
    return Decision.recorded(flow) if isinstance(flow, http.HTTPFlow) else None


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
        decision = _decision(flow)
        if decision is None:
            return "not a gateway flow", iter([[("text", "The gateway made no decision about this flow.")]])
        return "gateway decision", self._lines(flow, decision, data)

    @staticmethod
    def _lines(flow: http.HTTPFlow, decision: Decision, data: bytes) -> Iterator[TViewLine]:
        for label, value in decision_lines(flow, decision):
            yield [("header", f"{label}: "), ("text", value)]
        if data:
            yield []
            for line in data.decode("utf-8", "replace").splitlines():
                yield [("text", line)]

    def render_priority(
        self, data: bytes, *, flow: Any = None, http_message: http.Message | None = None, **unknown: Any
    ) -> float:
        decision = _decision(flow)
        own_answer = decision is not None and decision.answered_by and http_message is flow.response
        return _OWN_ANSWER_PRIORITY if own_answer else 0
