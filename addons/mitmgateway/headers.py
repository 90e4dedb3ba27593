"""Header edits on mitmproxy messages, done in one pass over the raw fields.

mitmproxy's `Headers` scans every field, converting each name through two layers of calls, on
each get, set and pop; the request path reads and edits several headers of every message, so
these helpers read and replace ``headers.fields`` (a tuple of ``(name, value)`` bytes pairs) in
one pass instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Set
from typing import Any

from mitmproxy import http

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"upgrade",
    }
)
# Never removed because a Connection header names them: mitmproxy has framed the message by them
# already, and without them the next hop would read the body as another message (smuggling).
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})

Fields = tuple[tuple[bytes, bytes], ...]


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_header_name(name: object) -> bool:
    """An RFC 9110 field name (a token): nothing that could end a header line or the head."""
    return isinstance(name, str) and _TOKEN.match(name) is not None


def single_line(value: Any) -> str:
    """A value as one header line: text as is, JSON for lists and mappings, true/false for
    booleans; control characters (line breaks above all) become spaces."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return _CONTROL.sub(" ", text)


def encode(value: str) -> bytes:
    """A header value as mitmproxy stores it (it decodes them as UTF-8 with surrogateescape)."""
    return value.encode("utf-8", "surrogateescape")


def connection_tokens(fields: Fields) -> set[bytes]:
    """The options the Connection headers name (lower case)."""
    tokens = set()
    for name, value in fields:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    tokens.discard(b"")
    return tokens


def strip_hop_by_hop(message: http.Message, upgrading: bool) -> set[bytes]:
    """Remove the hop-by-hop headers, and those the Connection header names (never the framing).

    `upgrading`: keep Upgrade, and a Connection that says only ``Upgrade``, for a WebSocket
    handshake. Returns the tokens the message's Connection header had (lower-case), which
    mitmproxy no longer sees once they are gone: the caller must carry on what they meant (close).
    """
    fields = message.headers.fields
    tokens = connection_tokens(fields)
    drop = (HOP_BY_HOP | tokens) - FRAMING
    if upgrading:
        drop -= {b"upgrade"}
    kept = tuple(field for field in fields if field[0].lower() not in drop)
    if upgrading:
        # Only the upgrade: other names in it would have the next hop drop headers the gateway set.
        kept += ((b"Connection", b"Upgrade"),)
    if kept != fields:
        message.headers.fields = kept
    return tokens


def closes_connection(message: http.Message, tokens: set[bytes]) -> bool:
    """Whether an HTTP/1 message with these Connection tokens ends its connection (RFC 9112 9.3)."""
    if b"close" in tokens:
        return True
    return message.http_version == "HTTP/1.0" and b"keep-alive" not in tokens


def remove_headers(message: http.Message, names: Set[bytes]) -> None:
    """Remove every header named in `names` (lower case), in one pass over the fields."""
    fields = message.headers.fields
    kept = tuple(field for field in fields if field[0].lower() not in names)
    if len(kept) != len(fields):
        message.headers.fields = kept


def set_headers(message: http.Message, headers: Fields) -> None:
    """Set each of `headers`, replacing any the message has of the same name."""
    remove_headers(message, {name.lower() for name, _ in headers})
    message.headers.fields += headers


def set_values(message: http.Message, values: Iterable[tuple[bytes, Any]]) -> None:
    """Set each named header to its value as one line (`single_line`); a None sets nothing."""
    added = tuple((name, encode(single_line(value))) for name, value in values if value is not None)
    if added:
        set_headers(message, added)


def scheme_credential(value: str, scheme: str) -> str | None:
    """The credential of an ``Authorization``-style value ``SCHEME CREDENTIAL``, when the scheme is
    `scheme` (lower case; compared without case) and a credential follows."""
    given, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    return credential if credential and given.lower() == scheme else None


def header_values(message: http.Message, name: bytes) -> list[str]:
    """``message.headers.get_all(name)`` for a lower-case `name`, in one pass over the fields."""
    return [v.decode("utf-8", "surrogateescape") for n, v in message.data.headers.fields if n.lower() == name]


def header_value(message: http.Message, name: bytes) -> str | None:
    """``message.headers.get(name)`` (repeated fields joined by ", ") for a lower-case `name`."""
    values = header_values(message, name)
    return (values[0] if len(values) == 1 else ", ".join(values)) if values else None


def host_header(request: http.Request) -> str | None:
    """``request.host_header``: HTTP/2's authority, else the Host field."""
    if request.data.authority and request.data.http_version in (b"HTTP/2.0", b"HTTP/3"):
        return request.authority
    return header_value(request, b"host")


def declared_length(message: http.Message) -> int | None:
    """The body length `Content-Length` declares, or None (absent or not a number)."""
    length = header_value(message, b"content-length")
    return int(length) if length is not None and length.isdigit() else None
