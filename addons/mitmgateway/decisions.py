"""Each flow's decision, recorded where metrics, the access log and mitmweb read it.

``flow.metadata["gateway"]`` holds it as data (it is saved with the flow); the flow's comment and
marker say it for people in mitmweb's list.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from .answers import as_json_error
from .observe.decision_view import why
from .routing import hostname_of

REJECTED_MARKER = ":no_entry:"
ANSWERED_MARKER = ":zap:"


def request_id(flow: http.HTTPFlow) -> str:
    """The request's id for an error body: the one the proxy step kept or made, or a new one."""
    record = flow.metadata.get("gateway", {})
    if "requestId" not in record:
        record["requestId"] = secrets.token_hex(16)
    return record["requestId"]


def record_decision(
    flow: http.HTTPFlow,
    answered_by: str | None,
    api_endpoint: str | None = None,
    pipeline: str | None = None,
    user: Mapping[str, Any] | None = None,
) -> None:
    """What was decided (`answered_by`: what answered, None when proxied), as data and for people."""
    decision = flow.metadata.setdefault("gateway", {})
    decision.update(apiEndpoint=api_endpoint, pipeline=pipeline, answeredBy=answered_by)
    if user is not None:
        decision["user"] = dict(user)
    where = f"apiEndpoint {api_endpoint} → pipeline {pipeline}" if pipeline else "no apiEndpoint matched"
    # A refusal the gateway made itself (content it served, a cached 404, is not one).
    refused = (
        answered_by is not None
        and not decision.get("served")
        and flow.response is not None
        and flow.response.status_code >= 400
    )
    if refused and decision.get("jsonErrors"):
        flow.response = as_json_error(flow.response, request_id(flow))  # type: ignore[arg-type]
    origin = decision.get("origin", {})
    if "path" in origin and origin["target"] != origin["path"]:
        where += f"; target {origin['target']!r} read as {origin['path']!r}"
    if answered_by:
        # The request never got an upstream: show it under the host the client asked for
        # rather than reverse mode's placeholder target.
        flow.request.data.host = hostname_of(flow.request.host_header or "") or flow.request.host
        status = flow.response.status_code if flow.response else ""
        reason = why(decision)
        flow.comment = f"gateway: {where}; answered {status} by {answered_by}" + (
            f" ({reason})" if reason else ""
        )
        # Refusals are marked; the gateway's other answers (a cache hit, a CORS preflight) too,
        # differently.
        flow.marked = REJECTED_MARKER if refused else ANSWERED_MARKER
    else:
        # mitmweb lists a proxied flow under its upstream: the comment keeps the client's view.
        asked = f"{origin.get('host', '')}{origin.get('path', '')}"
        flow.comment = f"gateway: {where}; {asked} proxied to {flow.request.host}:{flow.request.port}"
