"""A proxy action's mirror: its config refused with the key path when wrong, where each copy goes,
and what counts as the same answer (upstreams/mirror.py)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from mitmproxy import http

from gateway_unit import gateway_for, make_flow
from mitmgateway.bodies import BoundedCopy
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ROOT, ConfigError
from mitmgateway.hooks.mirrors import copy_of
from mitmgateway.policies import StepState
from mitmgateway.upstreams.endpoints import Upstream
from mitmgateway.upstreams.mirror import MirrorSpec, MirrorTarget, parse_json_path, parse_mirror

CONFIG = """\
http: {{port: 8080}}
apiEndpoints:
  api: {{host: api.local, paths: ['/api/*']}}
serviceEndpoints:
  backend: {{url: 'http://127.0.0.1:9001'}}
  next: {{urls: ['http://127.0.0.1:9101/v2/', 'http://127.0.0.2:9102']}}
policies: [proxy]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - proxy: [{{action: {{serviceEndpoint: backend, {action}}}}}]
"""


def spec(**action: object) -> MirrorSpec:
    from mitmgateway.upstreams.endpoints import ServiceEndpoint, Upstream

    service = ServiceEndpoint("next", (Upstream("http", "127.0.0.1", 9101, ""),))
    return MirrorSpec(parse_mirror({"serviceEndpoint": "next", **action}, ROOT.key("mirror")), service, None)


def answer(status: int = 200, body: object = None, **headers: str) -> http.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    fields = tuple((k.replace("_", "-").encode(), v.encode()) for k, v in headers.items())
    return http.Response(b"HTTP/1.1", status, b"", fields, content, None, 0, 0)


@pytest.mark.parametrize(
    ("mirror", "error"),
    [
        ("{serviceEndpoint: nowhere}", "mirror.serviceEndpoint: unknown serviceEndpoint 'nowhere'"),
        ("{serviceEndpoint: next, percent: 101}", "mirror.percent: must be a percentage (0-100)"),
        (
            "{serviceEndpoint: next, ignoreJsonPaths: [$.a, 'a b']}",
            "mirror.ignoreJsonPaths[1]: 'a b' is not a JSON path",
        ),
        (
            "{serviceEndpoint: next, ignoreJsonPaths: [$]}",
            "mirror.ignoreJsonPaths[0]: '$' names the whole document",
        ),
        (
            "{serviceEndpoint: next, ignoreHeaders: ['x y']}",
            "mirror.ignoreHeaders[0]: 'x y' is not a valid header name",
        ),
        ("{serviceEndpoint: next, maxInFlight: 0}", "mirror.maxInFlight: must be greater than 0"),
        ("{serviceEndpoint: next, percnt: 5}", "mirror.percnt: unknown key, did you mean 'percent'?"),
        ("{percent: 5}", "mirror.serviceEndpoint: is required"),
    ],
)
def test_a_wrong_mirror_is_refused_with_its_key_path(tmp_path, mirror, error):
    path = tmp_path / "gateway.config.yml"
    path.write_text(CONFIG.format(action=f"mirror: {mirror}"))
    with pytest.raises(ConfigError) as refused:
        load_config(path, StepState(), {})
    assert f"pipelines.main.policies[0].proxy[0].action.{error}" in str(refused.value)
    assert "gateway.config.yml:" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("$.a.b", ("a", "b")),
        ("a.b", ("a", "b")),
        ("items[2].id", ("items", 2, "id")),
        ("$['odd key'].x", ("odd key", "x")),
    ],
)
def test_json_paths(text, segments):
    assert parse_json_path(text, ROOT) == segments


@pytest.mark.parametrize("text", ["a..b", "$a", "a[x]", "a[0]b", ".", "a.", "a[-1]"])
def test_what_is_not_a_json_path(text):
    with pytest.raises(ConfigError, match="is not a JSON path"):
        parse_json_path(text, ROOT)


def test_status_headers_and_bodies_compared():
    same = spec()
    assert same.differs(answer(200, {"a": 1}), answer(200, {"a": 1})) is None
    assert same.differs(answer(200), answer(503)) == "status 200 ≠ 503"
    # Volatile headers never count; others do, unless ignored.
    assert same.differs(answer(Date="Mon", Server="a"), answer(Date="Tue", Server="b")) is None
    assert same.differs(answer(X_Build="1"), answer(X_Build="2")) == "header x-build: 1 ≠ 2"
    assert same.differs(answer(X_Build="1"), answer()) == "header x-build: 1 ≠ (none)"
    assert spec(ignoreHeaders=["X-Build"]).differs(answer(X_Build="1"), answer(X_Build="2")) is None
    # compareHeaders: only those, volatile or not.
    chosen = spec(compareHeaders=["etag"])
    assert chosen.differs(answer(X_Build="1", ETag="e"), answer(X_Build="2", ETag="e")) is None
    assert chosen.differs(answer(ETag="e"), answer(ETag="f")) == "header etag: e ≠ f"
    # Bodies: other bytes differ, by length...
    assert same.differs(answer(body=b"abc"), answer(body=b"abd")) == "body differs (3 ≠ 3 bytes)"
    # ...compared decoded, whatever the encoding each side chose.
    packed = answer(body=gzip.compress(b'{"a": 1}'), Content_Encoding="gzip")
    assert same.differs(packed, answer(body=b'{"a":1}')) is None


def test_json_bodies_minus_ignored_paths():
    primary = {"id": 7, "at": "10:00", "items": [{"sku": "a", "etag": "1"}, {"sku": "b", "etag": "2"}]}
    mirror = {"items": [{"sku": "a", "etag": "9"}, {"sku": "b", "etag": "8"}], "at": "10:01", "id": 7}
    assert spec().differs(answer(body=primary), answer(body=mirror)) == '$.at: "10:00" ≠ "10:01"'
    ignoring = spec(ignoreJsonPaths=["$.at", "items[*].etag"])
    assert ignoring.differs(answer(body=primary), answer(body=mirror)) is None
    assert (
        spec(ignoreJsonPaths=["at", "items[0].etag"]).differs(answer(body=primary), answer(body=mirror))
        == '$.items[1].etag: "2" ≠ "8"'
    )
    assert ignoring.differs(answer(body={**primary, "new": 1}), answer(body=mirror)) == (
        "$.new: only in the primary's answer"
    )
    assert ignoring.differs(answer(body={"id": 1}), answer(body={"id": 1.0})) == "$.id: 1 ≠ 1.0"
    # A body that is not JSON on either side: bytes.
    assert ignoring.differs(answer(body=b"{"), answer(body=b"{ ")) == "body differs (1 ≠ 2 bytes)"


def test_each_copy_goes_to_the_mirrors_next_url_with_the_steps_path_and_host(tmp_path):
    action = "stripPath: true, changeOrigin: false, mirror: {serviceEndpoint: next}"
    with gateway_for(tmp_path, CONFIG.format(action=action)) as gateway:
        targets = []
        for _ in range(3):
            flow = make_flow(path="/api/items?q=1")
            gateway.requestheaders(flow)
            assert flow.response is None
            targets.append(gateway.gate.exchanges[flow].mirror)
    assert [(t.upstream.port, t.path, t.host) for t in targets] == [
        (9101, "/v2/items?q=1", "api.local"),
        (9102, "/items?q=1", "api.local"),
        (9101, "/v2/items?q=1", "api.local"),
    ]


def test_what_is_compared_never_raises_and_never_decodes_without_bound():
    same = spec(maxBodyBytes=1000)
    # An ignored list item where the other list is longer: named, not a failure to print it.
    assert (
        spec(ignoreJsonPaths=["$.items[0]"]).differs(
            answer(body={"items": [1, 2]}), answer(body={"items": [1, 2, 3]})
        )
        == '$.items: ["(ignored)", 2] ≠ ["(ignored)", 2, 3]'
    )
    # Nested deeper than Python recurses: compared as bytes.
    deep = b"[" * 5000 + b"]" * 5000
    assert same.differs(answer(body=deep), answer(body=deep + b" ")) == "body differs (10000 ≠ 10001 bytes)"
    # The same bytes are the same answer, whatever they hold (NaN is not equal to itself).
    assert same.differs(answer(body=b'{"x": NaN}'), answer(body=b'{"x": NaN}')) is None
    # A body that decodes to more than maxBodyBytes is compared as it came, never inflated.
    bomb = gzip.compress(b"0" * 900_000)
    assert len(bomb) < 1000
    assert (
        same.differs(answer(body=bomb, Content_Encoding="gzip"), answer(body=bomb, Content_Encoding="gzip"))
        is None
    )
    assert same.differs(answer(body=bomb, Content_Encoding="gzip"), answer(body=b"0" * 10)) == (
        f"body differs ({len(bomb)} ≠ 10 bytes)"
    )
    # deflate, with or without its zlib header; another encoding is compared as it came.
    raw = zlib.compressobj(wbits=-15)
    headerless = raw.compress(b'{"a": 1}') + raw.flush()
    assert same.differs(answer(body=headerless, Content_Encoding="deflate"), answer(body={"a": 1})) is None
    assert (
        same.differs(
            answer(body=zlib.compress(b'{"a": 1}'), Content_Encoding="deflate"), answer(body={"a": 1})
        )
        is None
    )
    assert (
        same.differs(answer(body=b"xx", Content_Encoding="br"), answer(body=b"xx", Content_Encoding="br"))
        is None
    )


def test_repeated_header_fields_are_the_same_as_their_values_joined():
    one = http.Response(b"HTTP/1.1", 200, b"", ((b"Cache-Control", b"a, b"),), b"", None, 0, 0)
    two = http.Response(
        b"HTTP/1.1", 200, b"", ((b"cache-control", b"a"), (b"Cache-Control", b"b")), b"", None, 0, 0
    )
    assert spec().differs(one, two) is None
    assert spec().differs(one, answer(Cache_Control="b, a")) == "header cache-control: a, b ≠ b, a"


def test_only_the_percent_sampled_get_a_copy():
    assert all(spec().sampled() for _ in range(100))
    assert not any(spec(percent=0).sampled() for _ in range(100))
    assert 300 < sum(spec(percent=50).sampled() for _ in range(1000)) < 700


def test_a_bounded_copy_passes_every_chunk_on_and_keeps_only_a_body_within_its_limit():
    counted: list[bytes] = []
    copy = BoundedCopy(5, lambda chunk: counted.append(chunk) or chunk)
    assert [copy(c) for c in (b"ab", b"cd", b"")] == [b"ab", b"cd", b""]
    assert (copy.body, counted) == (b"abcd", [b"ab", b"cd", b""])
    over = BoundedCopy(5, None)
    assert [over(c) for c in (b"abc", b"def")] == [b"abc", b"def"]
    assert over.body is None and over.parts == [], "past the limit: nothing held"
    over(b"")
    assert over.body is None
    unfinished = BoundedCopy(5, None)
    unfinished(b"ab")
    assert unfinished.body is None, "not before the body's end"


def test_a_copy_carries_one_cookie_field_as_the_primarys_http1_upstream_gets():
    # An HTTP/2 client sends its cookie in crumbs; mitmproxy joins them for an HTTP/1 upstream.
    request = make_flow(headers={"Cookie": "a=1", "X-A": "x"}).request
    request.headers.add("cookie", "b=2")
    target = MirrorTarget(spec(), Upstream("http", "127.0.0.1", 9101, ""), "/items", "next.local")
    copy = copy_of(request, target, b"")
    assert [v for n, v in copy.fields if n.lower() == b"cookie"] == [b"a=1; b=2"]
    assert (b"Host", b"next.local") in copy.fields and (b"X-A", b"x") in copy.fields
