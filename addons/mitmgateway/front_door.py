"""The front door: what a request must be before anything judges it, and the one form it is judged in.

An upstream must parse exactly the request the gateway matched and ran its pipeline on. Servers
disagree about many spellings of one path (``/%61dmin``, ``//admin``, ``/admin%2fx``,
``/x/..%2fadmin``, ``/\\admin``), about a bare CR inside a header, about which of two Host headers
counts, and an HTTP/2 field may carry the CR LF that ends an HTTP/1 line. So before routing,
`admit`:

- refuses (400) a field name or value with CR, LF or NUL, in HTTP/1 and HTTP/2 alike;
- refuses an HTTP/1 request (1.0 aside) without exactly one Host, and a Host that is not an
  authority; an absolute-form target wins over Host (RFC 9112 §3.2.2), and the Host sent upstream
  is the target's;
- rewrites the request target to its canonical form (`canonical_target`), which routing,
  conditions, expressions, rate-limit and cache keys see and which the proxy step forwards;
- keeps ``Upgrade`` only on an RFC 6455 WebSocket handshake: any other upgrade is removed before
  forwarding (the gateway answers a 101 to it with 502, see hooks/response_side.py).

The canonical form itself is paths.py's.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from mitmproxy import http

from .headers import connection_tokens, remove_headers
from .paths import PathRules, Refusal, canonical_target

_FORBIDDEN_IN_FIELDS = re.compile(rb"[\r\n\x00]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 3986 authority without userinfo: a reg-name or IPv4 (escapes allowed), or an IP literal.
_AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=]+)(?::([0-9]{1,5}))?\Z")


def _fields(request: http.Request) -> bytes:
    """Every header name and value, in one string to search (tabs between them)."""
    return b"\t".join(b"".join(field) for field in request.headers.fields)


def _one_host(request: http.Request, hosts: list[bytes]) -> bytes | None:
    """The request's authority (absolute-form target, ``:authority``, or its one Host).

    HTTP/2's own rules (``:authority`` or ``host``, and the two agreeing) mitmproxy's h2 layer
    enforces, since the gateway keeps its ``validate_inbound_headers`` on."""
    if len(hosts) > 1:
        raise Refusal("more than one Host header")
    authority = request.data.authority
    if request.is_http2:
        if not (authority or hosts):  # not over HTTP/2, then: an HTTP/1 line saying HTTP/2.0
            raise Refusal("request without a host")
        return authority or hosts[0]
    if authority:
        # An absolute-form target: its authority is the host, whatever Host says (RFC 9112 §3.2.2).
        request.data.authority = b""
        request.headers["Host"] = authority.decode("ascii", "surrogateescape")
        return authority
    if not hosts and request.http_version != "HTTP/1.0":
        raise Refusal("HTTP/1.1 request without Host")
    return hosts[0] if hosts else None


def is_websocket_handshake(request: http.Request) -> bool:
    """Exactly RFC 6455 §4.1's opening handshake: GET over HTTP/1.1, ``Upgrade: websocket``,
    ``Connection: upgrade``, a 16-byte ``Sec-WebSocket-Key`` and version 13."""
    if request.method != "GET" or request.http_version != "HTTP/1.1":
        return False
    headers = request.headers
    upgrades = headers.get_all("upgrade")
    keys = headers.get_all("sec-websocket-key")
    if len(upgrades) != 1 or upgrades[0].strip().lower() != "websocket" or len(keys) != 1:
        return False
    if headers.get_all("sec-websocket-version") != ["13"]:
        return False
    if b"upgrade" not in connection_tokens(headers.fields):
        return False
    try:
        return len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    except binascii.Error:
        return False


@dataclass(frozen=True)
class Admitted:
    host: str
    """The authority the request names (Host, ``:authority`` or an absolute-form target)."""
    raw_target: str
    """The request target exactly as the client sent it (for the record and the access log)."""
    websocket: bool
    """Whether this is a WebSocket handshake, the one upgrade the gateway forwards."""


def admit(request: http.Request, rules: PathRules) -> Admitted:
    """Check a request's head and put its target in canonical form, once, before routing.

    Raises Refusal; on success the request's target is canonical and its Host the one that
    routes it."""
    if _FORBIDDEN_IN_FIELDS.search(_fields(request)):
        raise Refusal("CR, LF or NUL in a header field")
    data = request.data
    if not _TOKEN.match(data.method):
        raise Refusal("method is not a token")
    if data.method.upper() == b"CONNECT":
        # A tunnel past every policy; mitmproxy's HTTP/1 code reads the method without case.
        raise Refusal("CONNECT")
    hosts: list[bytes] = []
    upgrade = False
    for name, value in request.headers.fields:  # one pass for what the checks below need
        lower = name.lower()
        if lower == b"host":
            hosts.append(value)
        elif lower == b"upgrade":
            upgrade = True
    host = _one_host(request, hosts)
    if host is not None and ((authority := _AUTHORITY.match(host)) is None or int(authority[1] or 0) > 65535):
        raise Refusal("Host is not a host name or address")
    raw = data.path
    canonical = canonical_target(raw, rules)
    if canonical != raw:
        data.path = canonical
    websocket = upgrade and is_websocket_handshake(request)
    if upgrade and not websocket:
        # The one upgrade the gateway forwards: any other would become a raw tunnel that no
        # policy sees once the upstream answers 101.
        remove_headers(request, {b"upgrade"})
    return Admitted(
        host.decode("ascii", "surrogateescape") if host else "",
        raw.decode("utf-8", "surrogateescape"),
        websocket,
    )
