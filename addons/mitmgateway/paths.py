"""The canonical path (RFC 3986 §6.2.2, decoded once): escapes of unreserved characters decoded
(``%61`` → ``a``), other escapes upper-cased, bytes a path may not hold literally escaped
(non-ASCII, ``"``, ``{``...), runs of slashes merged, then dot-segments refused or resolved. A control
byte or space (literal or escaped) is refused; so is an escape whose decoding is another escape
(``%2561``, which a second decoding would turn into ``a``). Escaped slashes and backslashes (``%2F``,
``%5C``, a literal ``\\``) are where upstreams disagree most: refused by default, or kept as escapes
inside their segment. The query keeps its escapes as sent (``%26`` and ``&`` differ there); only
bytes it may not hold literally are escaped.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from .config.schema import option

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar without "%", and "/": what a canonical path holds literally.
_PATH_LITERAL = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_QUERY_LITERAL = _PATH_LITERAL | frozenset(b"?%")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_SLASHES = frozenset(b"/\\")

# A path without these is already canonical (the common case, one search): a byte that is escaped,
# decoded or refused, a dot-segment, and (when merged) an empty segment.
_ESCAPED_OR_REFUSED = rb"[^A-Za-z0-9\-._~!$&'()*+,=:@/%s]"
_DOT_SEGMENT = rb"|/\.\.?(?:/|\Z)"
_EMPTY_SEGMENT = rb"|//"
_QUERY_NOT_CANONICAL = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
_DOUBLE_ESCAPE = re.compile(rb"%25[0-9A-Fa-f]{2}")
_ESCAPED_SLASH = re.compile(rb"%2F|%5C")


@dataclass(frozen=True)
class PathRules:
    """``paths``: how the request path is put in its one canonical form."""

    merge_slashes: bool = option("mergeSlashes", True)
    """``//admin//x`` is ``/admin/x`` (as Python's http.server, Express and nginx read it)."""
    escaped_slashes: Literal["reject", "keep"] = option("escapedSlashes", "reject")
    """``%2F``, ``%5C`` and a literal backslash: 400, or kept as escapes inside their segment."""
    dot_segments: Literal["reject", "resolve"] = option("dotSegments", "reject")
    """``.`` and ``..`` segments (``%2e`` too, after decoding): 400, or resolved (RFC 3986 §5.2.4)."""
    semicolons: Literal["reject", "keep"] = option("semicolons", "reject")
    """A literal ``;``: 400, or kept. Tomcat and Spring cut a segment at ``;`` (``/admin;x/secret``
    is ``/admin/secret`` to them), so it is refused by default, as Spring Security's firewall does."""

    @functools.cached_property
    def quick_check(self) -> re.Pattern[bytes]:
        """Matches any path that is not already canonical under these rules."""
        literal = _ESCAPED_OR_REFUSED % (b"" if self.semicolons == "reject" else b";")
        return re.compile(literal + _DOT_SEGMENT + (_EMPTY_SEGMENT if self.merge_slashes else b""))


class Refusal(Exception):
    """A request the front door does not let in: answered 400 with `reason` in the record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _escape(byte: int) -> bytes:
    return b"%%%02X" % byte


def _decode_path(raw: bytes, rules: PathRules) -> bytes:
    """Each escape decoded once where that is safe, everything else in one spelling."""
    out = bytearray()
    i, n = 0, len(raw)
    keep_slashes = rules.escaped_slashes == "keep"
    keep_semicolons = rules.semicolons == "keep"
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # %
            digits = raw[i + 1 : i + 3]
            if len(digits) < 2 or not _HEX.issuperset(digits):
                raise Refusal("malformed percent-escape in path")
            value = int(digits, 16)
            i += 3
        else:
            value = byte
            i += 1
            if value == 0x5C:  # a literal backslash is a slash to some upstreams
                if not keep_slashes:
                    raise Refusal("backslash in path")
                out += b"%5C"
                continue
            if value == 0x3B and not keep_semicolons:
                raise Refusal("semicolon in path")
            if value in _PATH_LITERAL:
                out.append(value)
                continue
        if value < 0x21 or value == 0x7F:
            raise Refusal("control character or space in path")
        if byte == 0x25 and value in _UNRESERVED:
            out.append(value)
        elif byte == 0x25 and value in _SLASHES and not keep_slashes:
            raise Refusal("escaped slash in path")
        elif byte == 0x25 and value == 0x3B and not keep_semicolons:
            raise Refusal("semicolon in path")  # one more decoding would make it a literal one
        else:
            out += _escape(value)
    return bytes(out)


def _segments(path: bytes, rules: PathRules) -> bytes:
    """Merge slashes and handle dot-segments, on a path already decoded."""
    segments = path.split(b"/")[1:]  # the path starts with "/"
    if rules.merge_slashes:
        trailing = path.endswith(b"/")
        segments = [s for s in segments if s]
        if trailing and segments:
            segments.append(b"")
    if rules.escaped_slashes == "keep" and any(
        piece in (b".", b"..") for s in segments if b"%" in s for piece in _ESCAPED_SLASH.split(s)
    ):
        # /static/..%2Fprivate is one segment here, and a dot-segment to an upstream that decodes.
        raise Refusal("dot-segment beside an escaped slash in path")
    if not any(s in (b".", b"..") for s in segments):
        return b"/" + b"/".join(segments) if segments else b"/"
    if rules.dot_segments == "reject":
        raise Refusal("dot-segment in path")
    kept: list[bytes] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment != b".":
            kept.append(segment)
            continue
        if last:  # "/a/b/.." is "/a/": the directory the dot-segment names
            kept.append(b"")
    return b"/" + b"/".join(kept)


def canonical_path(raw: bytes, rules: PathRules) -> bytes:
    """The one spelling of a request path (no query); raises Refusal."""
    if not raw.startswith(b"/"):
        raise Refusal("request target is not a path")
    if rules.quick_check.search(raw) is None:
        return raw
    path = _segments(_decode_path(raw, rules), rules)
    if _DOUBLE_ESCAPE.search(path):
        # A second decoding (some frameworks and proxies do one) would change it again.
        raise Refusal("escape of an escape in path")
    return path


_DOT_SEGMENT_TEXT = re.compile(r"(?:^|/)\.\.?(?:/|\?|$)")


def has_dot_segment(path: str) -> bool:
    """Whether a path (with or without its query) holds a ``.`` or ``..`` segment."""
    return _DOT_SEGMENT_TEXT.search(path.partition("?")[0]) is not None


def canonical_query(raw: bytes) -> bytes:
    """The query with its escapes as sent; bytes it may not hold literally escaped."""
    if _QUERY_NOT_CANONICAL.search(raw) is None:
        return raw
    out = bytearray()
    for byte in raw:
        if byte < 0x21 or byte == 0x7F:
            raise Refusal("control character or space in query")
        out += bytes((byte,)) if byte in _QUERY_LITERAL else _escape(byte)
    return bytes(out)


def canonical_target(raw: bytes, rules: PathRules) -> bytes:
    """``path?query`` in canonical form; raises Refusal."""
    path, mark, query = raw.partition(b"?")
    canonical = canonical_path(path, rules)
    return canonical + mark + canonical_query(query) if mark else canonical
