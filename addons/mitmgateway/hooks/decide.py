"""Recording what the gateway decided about a flow, and its own refusals: the one way the gate
and the response side conclude a request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from ..answers import as_json_error, closing_answer_to, make_answer
from ..decision import Decision
from ..ids import new_request_id
from ..observe.decision_view import show_in_mitmweb


def decide(
    flow: http.HTTPFlow,
    answered_by: str | None,
    api_endpoint: str | None = None,
    pipeline: str | None = None,
    user: Mapping[str, Any] | None = None,
    shown: bool = True,
) -> None:
    """Record the decision (`answered_by`: what answered, None when proxied), shaped as the
    config's errors are when it is a refusal, and (`shown`) shown in mitmweb."""
    decision = Decision.of(flow)
    decision.api_endpoint, decision.pipeline, decision.answered_by = api_endpoint, pipeline, answered_by
    if user is not None:
        decision.user = dict(user)
    # A refusal the gateway made itself (content it served, a cached 404, is not one).
    refused = (
        answered_by is not None
        and not decision.served
        and flow.response is not None
        and flow.response.status_code >= 400
    )
    if refused and decision.json_errors:
        if decision.request_id is None:
            decision.request_id = new_request_id()
        flow.response = as_json_error(flow.response, decision.request_id)  # type: ignore[arg-type]
    if shown:
        show_in_mitmweb(flow, decision, refused)


def refuse(
    flow: http.HTTPFlow, status: int, message: str, by: str, *, closing: bool = False, routed: bool = False
) -> None:
    """Answer `flow` with the gateway's refusal, decided `by` what. `closing`: the connection
    closes after it (nothing after such a request on it can be trusted). `routed`: the request had
    reached its pipeline, which the decision keeps (otherwise it names none, whatever a replayed
    flow's record said)."""
    if closing:
        flow.response = closing_answer_to(flow, status, message)
    else:
        flow.response = make_answer(flow.request, status, message)
    decision = Decision.of(flow)
    if routed:
        decide(flow, by, decision.api_endpoint, decision.pipeline)
    else:
        decide(flow, by)
