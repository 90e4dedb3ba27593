"""The gateway's own answers (401, 404, 429, 502...), built in one place.

A client asking for JSON (``Accept: application/json``) gets ``{"message": ...}``; everyone else
gets the message as text/plain, as Express Gateway answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from mitmproxy import http

NOT_FOUND = "Not Found"
BAD_GATEWAY = "Bad gateway."
INTERNAL_ERROR = "Internal Server Error"


def wants_json(request: http.Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def make_answer(
    request: http.Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> http.Response:
    if wants_json(request):
        body = json.dumps({"message": message}).encode()
        content_type = "application/json; charset=utf-8"
    else:
        body = message.encode()
        content_type = "text/plain; charset=utf-8"
    response = http.Response.make(status, body, {"Content-Type": content_type, **(headers or {})})
    # mitmproxy's table lacks some phrases (429); an empty reason line confuses some clients.
    response.reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    return response
