"""The canonical request target (#11), as properties: generated spellings of paths (escapes of any
byte in either case, repeated and trailing slashes, plain and encoded dot-segments, encoded slashes
and backslashes, semicolons, unicode) and header values with stray CR/LF/NUL, held against a
reference decoder written independently of front_door.py."""

from __future__ import annotations

import re
import string
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import tutils

from mitmgateway.front_door import admit
from mitmgateway.paths import PathRules, Refusal, canonical_path, canonical_query

UNRESERVED = frozenset((string.ascii_letters + string.digits + "-._~").encode())
SUB_DELIMS_ETC = frozenset(b"!$&'()*+,;=:@")


def reference(raw: bytes, rules: PathRules) -> bytes | None:
    """RFC 3986 6.2.2 read literally, token by token, then segment by segment; None: refused."""
    segments: list[list[bytes]] = [[]]
    for token in re.findall(rb"%[0-9A-Fa-f]{2}|%|[\x00-\xff]", raw):
        if token == b"%":
            return None
        escaped = len(token) == 3
        value = int(token[1:], 16) if escaped else token[0]
        if value <= 0x20 or value == 0x7F:
            return None
        if value == ord("/") and not escaped:
            segments.append([])
        elif value in b"/\\":
            if rules.escaped_slashes == "reject":
                return None
            segments[-1].append(b"%%%02X" % value)
        elif value == ord(";") and rules.semicolons == "reject":
            return None  # literal, or escaped (a second decoding would make it literal)
        elif value in UNRESERVED or (value in SUB_DELIMS_ETC and not escaped):
            segments[-1].append(bytes([value]))
        else:
            segments[-1].append(b"%%%02X" % value)
    if segments[0]:
        return None  # not starting with "/"
    parts = [b"".join(s) for s in segments[1:]]
    if rules.merge_slashes:
        parts = [p for p in parts if p] + ([b""] if parts and parts[-1] == b"" and any(parts) else [])
    pieces = (piece for p in parts if re.search(rb"%2F|%5C", p) for piece in re.split(rb"%2F|%5C", p))
    if rules.escaped_slashes == "keep" and any(piece in (b".", b"..") for piece in pieces):
        return None  # a dot-segment once the escaped slash is decoded
    if any(p in (b".", b"..") for p in parts):
        if rules.dot_segments == "reject":
            return None
        stack: list[bytes] = []
        for i, p in enumerate(parts):
            if p == b"..":
                stack = stack[:-1]
            elif p != b".":
                stack.append(p)
                continue
            if i == len(parts) - 1:
                stack.append(b"")
        parts = stack
    path = b"/" + b"/".join(parts)
    if re.search(rb"%25[0-9A-Fa-f]{2}", path):
        return None
    return path


def what_an_upstream_reads(path: bytes) -> bytes:
    """A lenient server's reading: decoded once, runs of slashes merged."""
    return re.sub(rb"/+", b"/", unquote_to_bytes(path))


PIECES = st.one_of(
    st.sampled_from(
        [
            *(b"/", b"//", b".", b"..", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c", b"%5C", b"\\", b";"),
            *(b"%25", b"%61", b"%41", b"%7e", b"admin", b"a", b"%", b"%g1", b"%4"),
            *(b" ", b"\x00", b"\r\n", b"#"),
        ]
    ),
    st.integers(0, 255).map(lambda b: b"%%%02x" % b),
    st.integers(0, 255).map(lambda b: b"%%%02X" % b),
    st.integers(0, 255).map(lambda b: bytes([b])),
    st.text(max_size=3).map(lambda t: t.replace("?", "").encode("utf-8")),
)
PATHS = st.lists(PIECES, max_size=12).map(lambda pieces: b"/" + b"".join(pieces))
RULES = st.builds(
    PathRules,
    merge_slashes=st.booleans(),
    escaped_slashes=st.sampled_from(["reject", "keep"]),
    dot_segments=st.sampled_from(["reject", "resolve"]),
    semicolons=st.sampled_from(["reject", "keep"]),
)


def canonical_or_none(raw: bytes, rules: PathRules) -> bytes | None:
    try:
        return canonical_path(raw, rules)
    except Refusal:
        return None


@settings(max_examples=3000, deadline=None)
@given(PATHS, RULES)
def test_the_canonical_path_is_the_reference_decoders(raw, rules):
    assert canonical_or_none(raw, rules) == reference(raw, rules)


@settings(max_examples=2000, deadline=None)
@given(PATHS, RULES)
def test_a_canonical_path_is_its_own_canonical_form_and_means_what_the_client_sent(raw, rules):
    canonical = canonical_or_none(raw, rules)
    if canonical is None:
        return
    assert canonical_path(canonical, rules) == canonical
    # What the gateway matched is what an upstream reads, whichever of the two it is handed.
    if rules.merge_slashes and rules.dot_segments == "reject":
        assert what_an_upstream_reads(canonical) == what_an_upstream_reads(raw)
    # One spelling: upper-case escapes, none of an unreserved byte, nothing a path may not hold.
    for escape in re.findall(rb"%(..)", canonical):
        assert escape == escape.upper() and int(escape, 16) not in UNRESERVED
    assert re.fullmatch(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*", canonical)
    if rules.merge_slashes:
        assert b"//" not in canonical
    if rules.escaped_slashes == "reject":
        assert not re.search(rb"%2F|%5C|\\", canonical, re.IGNORECASE)
    if rules.semicolons == "reject":
        assert b";" not in canonical
    segments = unquote_to_bytes(canonical).split(b"/")
    assert b"." not in segments and b".." not in segments


@settings(max_examples=1000, deadline=None)
@given(PATHS)
def test_every_spelling_of_a_slash_or_dot_segment_is_refused_by_default(raw):
    decoded = unquote_to_bytes(raw)
    refused = canonical_or_none(raw, PathRules()) is None
    if re.search(rb"%2F|%5C", raw, re.IGNORECASE) or b"\\" in raw or b";" in raw:
        assert refused
    if any(s in (b".", b"..") for s in re.sub(rb"/+", b"/", decoded).split(b"/")) and b"%" not in decoded:
        assert refused


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"/%61dmin/x", b"/admin/x"),
        (b"//admin//x/", b"/admin/x/"),
        (b"/caf\xc3\xa9/%c3%a9", b"/caf%C3%A9/%C3%A9"),
        (b"/a%7e%7E", b"/a~~"),
        (b"/a%21!", b"/a%21!"),  # sub-delims keep their spelling (RFC 3986 6.2.2.2)
        (b"/a#b", b"/a%23b"),
        (b"/.well-known/x", b"/.well-known/x"),
    ],
)
def test_canonical_forms(raw, expected):
    assert canonical_path(raw, PathRules()) == expected


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"/admin%2fx", "escaped slash in path"),
        (b"/\\admin", "backslash in path"),
        (b"/x/../admin", "dot-segment in path"),
        (b"/x/%2E%2e/admin", "dot-segment in path"),
        (b"/%2561dmin", "escape of an escape in path"),
        (b"/%25%36%31dmin", "escape of an escape in path"),  # decodes once to %61
        (b"/a%zz", "malformed percent-escape in path"),
        (b"/a%00", "control character or space in path"),
        (b"/admin;x/secret", "semicolon in path"),
        (b"/admin%3bx/secret", "semicolon in path"),
        (b"*", "request target is not a path"),
    ],
)
def test_refusals_say_why(raw, reason):
    with pytest.raises(Refusal) as refused:
        canonical_path(raw, PathRules())
    assert refused.value.reason == reason


def test_the_other_choices():
    resolving = PathRules(
        dot_segments="resolve", escaped_slashes="keep", semicolons="keep", merge_slashes=False
    )
    assert canonical_path(b"/x/a%2fadmin", resolving) == b"/x/a%2Fadmin"  # one opaque segment
    with pytest.raises(Refusal):  # ...but not one an upstream that decodes reads as a dot-segment
        canonical_path(b"/static/..%2Fprivate/x", resolving)
    assert canonical_path(b"/api/../admin/.", resolving) == b"/admin/"
    assert canonical_path(b"/\\admin", resolving) == b"/%5Cadmin"
    assert canonical_path(b"//a;b", resolving) == b"//a;b"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=20))
def test_a_query_keeps_its_escapes_and_never_carries_a_control_byte(query):
    try:
        canonical = canonical_query(query)
    except Refusal:
        assert re.search(rb"[\x00-\x20\x7f]", query)
        return
    assert re.fullmatch(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*", canonical)
    assert unquote_to_bytes(canonical) == unquote_to_bytes(re.sub(rb"%(?![0-9A-Fa-f]{2})", b"%25", query))


FIELD_VALUES = st.lists(
    st.sampled_from([b"a", b"\r", b"\n", b"\x00", b"\r\n", b" ", b"\t", b"\xff"]), max_size=6
)


@settings(max_examples=500, deadline=None)
@given(st.lists(FIELD_VALUES.map(b"".join), min_size=1, max_size=4), st.booleans())
def test_a_header_value_with_cr_lf_or_nul_is_refused_over_either_http_version(values, http2):
    request = tutils.treq(path=b"/x", http_version=b"HTTP/2.0" if http2 else b"HTTP/1.1")
    request.headers.clear()
    request.headers.fields = (
        (b"host", b"api.local"),
        *((b"x-value-%d" % i, v) for i, v in enumerate(values)),
    )
    forbidden = any(re.search(rb"[\r\n\x00]", v) for v in values)
    try:
        admit(request, PathRules())
    except Refusal as refused:
        assert forbidden and refused.reason == "CR, LF or NUL in a header field"
    else:
        assert not forbidden
