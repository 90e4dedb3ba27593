"""mitmproxy's own error answers (upstream refused, reset, timed out...) made the gateway's.

Written against mitmproxy 11.0: it renders these itself as an HTML page in
``proxy/layers/http/_http1.py:make_error_response`` (HTTP/1 clients: the whole response) and
``proxy/layers/http/_http2.py:format_error`` (HTTP/2 clients: the body; it sends the head itself)
and, up to 12.x, has no hook to replace them (a proposal is mitmproxy pull request #7999). Both are
swapped while the gateway is loaded and restored when it is unloaded.
"""

from __future__ import annotations

from http import HTTPStatus

from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1, _http2

from ..answers import BAD_GATEWAY, closing_answer, json_error
from .patches import Patches


def _error_text(status_code: int, message: str) -> str:
    return BAD_GATEWAY if status_code == 502 else message or HTTPStatus(status_code).phrase


def _error_body(status_code: int, message: str = "", *, json_errors: bool = False) -> bytes:
    """The body of such an answer to an HTTP/2 client (mitmproxy sends the head itself, as
    text/html)."""
    text = _error_text(status_code, message)
    if json_errors:
        return json_error(status_code, text, None).content or b""
    return text.encode()


def _error_response_bytes(status_code: int, message: str = "", *, json_errors: bool = False) -> bytes:
    """What the client gets when mitmproxy itself fails a request (upstream refused, reset...).

    An upstream failure is Express Gateway's ``Bad gateway.``: the socket error behind it names
    internal addresses, so it goes to the log (mitmproxy logs it), not to the client.
    """
    text = _error_text(status_code, message)
    return http1.assemble_response(closing_answer(status_code, text, json_errors=json_errors))


class ProxyErrorAnswers:
    """Make mitmproxy's own error answers the gateway's (for HTTP/2 clients, their body)."""

    def __init__(self) -> None:
        self._patches = Patches()
        self.json_errors = False

    def render(self, status_code: int, message: str = "") -> bytes:
        return _error_response_bytes(status_code, message, json_errors=self.json_errors)

    def _render_h2_body(self, status_code: int, message: str = "") -> bytes:
        return _error_body(status_code, message, json_errors=self.json_errors)

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(_http1, "make_error_response", lambda _original: self.render)
            # HTTP/2 clients: the error page's body (its message names upstream addresses and TLS
            # errors, which belong in the log).
            self._patches.replace(_http2, "format_error", lambda _original: self._render_h2_body)

    def uninstall(self) -> None:
        self._patches.restore()
