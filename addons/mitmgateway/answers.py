"""The gateway's own answers (401, 404, 429, 502...), built in one place.

A client asking for JSON (``Accept: application/json``) gets ``{"message": ...}``; everyone else
gets the message as text/plain, as Express Gateway answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

NOT_FOUND = "Not Found"
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
BAD_GATEWAY = "Bad gateway."
GATEWAY_TIMEOUT = "Gateway Timeout"
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


def _error_response_bytes(status_code: int, message: str = "") -> bytes:
    """What the client gets when mitmproxy itself fails a request (upstream refused, reset...).

    An upstream failure is Express Gateway's ``Bad gateway.``: the socket error behind it names
    internal addresses, so it goes to the log (mitmproxy logs it), not to the client.
    """
    text = BAD_GATEWAY if status_code == 502 else message or HTTPStatus(status_code).phrase
    response = http.Response.make(
        status_code, text.encode(), {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"}
    )
    return http1.assemble_response(response)


class ProxyErrorAnswers:
    """Make mitmproxy's own error answers the gateway's, for HTTP/1 clients.

    mitmproxy renders these itself as an HTML page and, up to 12.x, has no hook to replace it
    (a proposal is mitmproxy pull request #7999), so the one function that renders them is
    swapped while the gateway is loaded and restored when it is unloaded.
    """

    def __init__(self) -> None:
        self._original: object | None = None

    def install(self) -> None:
        if self._original is None and hasattr(_http1, "make_error_response"):
            self._original = _http1.make_error_response
            _http1.make_error_response = _error_response_bytes

    def uninstall(self) -> None:
        if self._original is not None:
            _http1.make_error_response = self._original
            self._original = None
