"""The gateway's own answers (401, 404, 429, 502...), built in one place.

A client asking for JSON (``Accept: application/json``) gets ``{"message": ...}``; everyone else
gets the message as text/plain, as Express Gateway answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from mitmproxy import http

from .decision import Decision

NOT_FOUND = "Not Found"
BAD_REQUEST = "Bad Request"
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
BAD_GATEWAY = "Bad gateway."
GATEWAY_TIMEOUT = "Gateway Timeout"
INTERNAL_ERROR = "Internal Server Error"


def wants_json(request: http.Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def make_answer(
    request: http.Request | None, status: int, message: str, headers: Mapping[str, str] | None = None
) -> http.Response:
    """The gateway's answer to `request` (None: to a client not known to want JSON)."""
    if request is not None and wants_json(request):
        body = json.dumps({"message": message}).encode()
        content_type = "application/json; charset=utf-8"
    else:
        body = message.encode()
        content_type = "text/plain; charset=utf-8"
    response = http.Response.make(status, body, {"Content-Type": content_type, **(headers or {})})
    # mitmproxy's table lacks some phrases (429, 431); an empty reason line confuses some clients.
    response.reason = _phrase(status)
    return response


def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""


def json_error(status: int, message: str, request_id: str | None) -> http.Response:
    """``errors: {format: json}``: one error shape whichever policy answered."""
    body = json.dumps({"error": _phrase(status) or str(status), "message": message, "requestId": request_id})
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if request_id:
        headers["X-Request-Id"] = request_id
    response = http.Response.make(status, body.encode(), headers)
    response.reason = _phrase(status)
    return response


def closing_answer(
    status: int,
    message: str,
    *,
    request: http.Request | None = None,
    json_errors: bool = False,
    request_id: str | None = None,
) -> http.Response:
    """An answer after which the connection closes, shaped as the gateway's other errors are."""
    if json_errors:
        response = json_error(status, message, request_id)
    else:
        response = make_answer(request, status, message)
    response.headers["Connection"] = "close"
    return response


def closing_answer_to(flow: http.HTTPFlow, status: int, message: str) -> http.Response:
    """`closing_answer` for a flow the gateway has a decision record for."""
    decision = Decision.recorded(flow)
    return closing_answer(
        status,
        message,
        request=flow.request,
        json_errors=decision is not None and decision.json_errors,
        request_id=decision.request_id if decision is not None else None,
    )


# What described the old body (or its framing), and what json_error sets itself.
_REPLACED_BY_JSON_ERROR = frozenset(
    {b"content-type", b"content-length", b"content-encoding", b"transfer-encoding", b"etag", b"x-request-id"}
)


def as_json_error(response: http.Response, request_id: str | None) -> http.Response:
    """One of the gateway's own answers, reshaped as `json_error` (its other headers kept)."""
    text = response.get_text(strict=False) or ""
    try:
        message = json.loads(text)["message"] if text.startswith("{") else text
    except (ValueError, KeyError, TypeError):
        message = text
    reshaped = json_error(response.status_code, str(message), request_id)
    for name, value in response.headers.fields:
        if name.lower() not in _REPLACED_BY_JSON_ERROR:
            reshaped.headers.fields += ((name, value),)
    return reshaped
