"""Every condition, compiled from its config form and evaluated on mitmproxy test flows."""

from __future__ import annotations

import gzip
import json

import pytest

from gateway_unit import make_flow
from mitmgateway.clients import ClientIdentification
from mitmgateway.conditions import parse_condition, reads_body
from mitmgateway.config.errors import ConfigError, KeyPath
from mitmgateway.context import RequestContext
from mitmgateway.routing import hostname_of


def evaluate(condition: dict, *, user: dict | None = None, body: bytes = b"", **flow_kwargs) -> bool:
    flow = make_flow(**flow_kwargs)
    flow.request.raw_content = body
    host = flow.request.host_header or ""
    ctx = RequestContext(flow, None, hostname_of(host), ClientIdentification("192.0.2.10", None))  # type: ignore[arg-type]
    ctx.user = user
    return parse_condition(condition, KeyPath("condition"))(ctx)


@pytest.mark.parametrize(
    ("condition", "flow_kwargs", "expected"),
    [
        ({"name": "always"}, {}, True),
        ({"name": "never"}, {}, False),
        ({"name": "pathExact", "path": "/status"}, {"path": "/status?x=1"}, True),
        ({"name": "pathExact", "path": "/status"}, {"path": "/status/"}, False),
        ({"name": "pathMatch", "pattern": "^/v[0-9]+/"}, {"path": "/v2/items"}, True),
        ({"name": "pathMatch", "pattern": "^/v[0-9]+/"}, {"path": "/api/v2/"}, False),
        ({"name": "method", "methods": "GET,HEAD"}, {"method": "HEAD"}, True),
        ({"name": "method", "methods": ["post"]}, {"method": "POST"}, True),
        ({"name": "method", "methods": ["POST"]}, {"method": "GET"}, False),
        ({"name": "hostMatch", "pattern": "*.example.com"}, {"host": "API.example.com:8080"}, True),
        ({"name": "hostMatch", "pattern": "*.example.com"}, {"host": "example.org"}, False),
        (
            {"name": "allOf", "conditions": [{"name": "always"}, {"name": "method", "methods": "GET"}]},
            {},
            True,
        ),
        ({"name": "allOf", "conditions": [{"name": "always"}, {"name": "never"}]}, {}, False),
        ({"name": "oneOf", "conditions": [{"name": "never"}, {"name": "always"}]}, {}, True),
        ({"name": "oneOf", "conditions": [{"name": "always"}, {"name": "always"}]}, {}, True),
        ({"name": "oneOf", "conditions": [{"name": "never"}, {"name": "never"}]}, {}, False),
        ({"name": "not", "condition": {"name": "never"}}, {}, True),
        ({"name": "not", "condition": {"name": "pathExact", "path": "/"}}, {}, False),
    ],
)
def test_request_conditions(condition, flow_kwargs, expected):
    assert evaluate(condition, **flow_kwargs) is expected


def test_authenticated_and_anonymous_follow_the_verified_user():
    claims = {"sub": "alice"}
    assert evaluate({"name": "authenticated"}, user=claims) is True
    assert evaluate({"name": "authenticated"}) is False
    assert evaluate({"name": "anonymous"}) is True
    assert evaluate({"name": "anonymous"}, user=claims) is False


ORDER = {
    "type": "object",
    "required": ["sku", "quantity"],
    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
}


def with_body(body: bytes, content_type: str = "application/json", **headers: str) -> dict:
    fields = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return {"method": "POST", "headers": fields, "body": body}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"sku": "a-1", "quantity": 2}', "application/json", True),
        (b'{"sku": "a-1", "quantity": 0}', "application/json", False),
        (b'{"sku": "a-1"}', "application/json", False),
        (b'{"sku": "a-1", "quantity": 2}', "application/vnd.shop+json; charset=utf-8", True),
        # Read as Express Gateway's body parsers read: JSON only when it says it is JSON.
        (b'{"sku": "a-1", "quantity": 2}', "text/plain", False),
        (b"not json", "application/json", False),
        (b"", "application/json", False),
        (b"[" * 5000 + b"]" * 5000, "application/json", False),
        # A form, as Express Gateway's urlencoded parser reads it: every value a string.
        (b"sku=a-1&quantity=2", "application/x-www-form-urlencoded", False),
        (b"sku=a-1&sku=b-2", "application/x-www-form-urlencoded; charset=utf-8", False),
        (b"%zz=&&=", "application/x-www-form-urlencoded", False),
    ],
)
def test_json_schema_validates_the_body(body, content_type, expected):
    condition = {"name": "json-schema", "schema": ORDER}
    assert evaluate(condition, **with_body(body, content_type)) is expected


def test_json_schema_reads_forms_and_encoded_bodies():
    form = {
        "type": "object",
        "properties": {"sku": {"type": "array"}, "note": {"const": ""}},
        "required": ["sku"],
    }
    condition = {"name": "json-schema", "schema": form}
    assert evaluate(condition, **with_body(b"sku=a&sku=b&note=", "application/x-www-form-urlencoded")) is True
    packed = gzip.compress(b'{"sku": "a-1", "quantity": 2}')
    order = {"name": "json-schema", "schema": ORDER}
    assert evaluate(order, **with_body(packed, Content_Encoding="gzip")) is True
    # A body that would decode to more than the condition reads is not read: false.
    bomb = gzip.compress(b" " * (11 << 20) + b'{"sku": "a-1", "quantity": 2}')
    assert evaluate(order, **with_body(bomb, Content_Encoding="gzip")) is False


def test_json_schema_logs_why_only_when_asked(caplog):
    condition = {"name": "json-schema", "schema": ORDER, "logErrors": True}
    with caplog.at_level("INFO", logger="mitmgateway"):
        assert evaluate(condition, **with_body(b'{"sku": "a-1", "quantity": 0}')) is False
        assert evaluate({**condition, "logErrors": False}, **with_body(b"{}")) is False
    assert [r.getMessage() for r in caplog.records] == [
        "json-schema condition: the body does not validate at $.quantity: 0 is less than the minimum of 1"
    ]


@pytest.mark.parametrize(
    ("schema", "error"),
    [
        ({"type": "objekt"}, "condition.schema: not a valid JSON Schema: 'objekt' is not valid under any"),
        ({"properties": {"a": {"minimum": "one"}}}, "(at schema.properties.a.minimum)"),
        ("{}", "condition.schema: must be a mapping"),
    ],
)
def test_a_wrong_schema_is_refused_at_load_with_its_key_path(schema, error):
    with pytest.raises(ConfigError) as refused:
        parse_condition({"name": "json-schema", "schema": schema}, KeyPath("condition"))
    assert error in str(refused.value)


def test_a_condition_holding_json_schema_reads_the_body():
    schema = {"name": "json-schema", "schema": ORDER}
    for condition, expected in [
        (schema, True),
        ({"name": "not", "condition": schema}, True),
        (
            {"name": "allOf", "conditions": [{"name": "always"}, {"name": "oneOf", "conditions": [schema]}]},
            True,
        ),
        ({"name": "allOf", "conditions": [{"name": "always"}]}, False),
        ({"name": "pathExact", "path": "/"}, False),
    ]:
        assert reads_body(parse_condition(condition, KeyPath("condition"))) is expected


def test_unique_items_is_one_pass_and_keeps_json_equality():
    unique = {"name": "json-schema", "schema": {"type": "array", "uniqueItems": True}}
    many = json.dumps([{"a": i} for i in range(3000)]).encode()  # jsonschema's own check took 10 s
    assert evaluate(unique, **with_body(many)) is True
    assert evaluate(unique, **with_body(b'[{"a": 1, "b": 2}, {"b": 2, "a": 1.0}]')) is False
    assert evaluate(unique, **with_body(b"[1, true]")) is True, "true is not 1 in JSON"


def test_refs_resolve_within_the_schema_and_none_is_ever_fetched():
    local = {"$defs": {"sku": {"type": "string"}}, "properties": {"sku": {"$ref": "#/$defs/sku"}}}
    condition = {"name": "json-schema", "schema": local}
    assert evaluate(condition, **with_body(b'{"sku": "a"}')) is True
    assert evaluate(condition, **with_body(b'{"sku": 1}')) is False
    for ref in ("#/$defs/missing", "https://schemas.example/sku.json", "file:///etc/passwd"):
        schema = {"properties": {"sku": {"$ref": ref}}}
        with pytest.raises(
            ConfigError, match=r"names nothing within the schema \(a \$ref is never fetched\)"
        ):
            parse_condition({"name": "json-schema", "schema": schema}, KeyPath("condition"))


def test_a_body_over_100_kib_does_not_validate():
    condition = {"name": "json-schema", "schema": {"type": "array"}}
    assert evaluate(condition, **with_body(json.dumps([0] * 30_000).encode())) is True  # 90 KB
    assert evaluate(condition, **with_body(json.dumps([0] * 40_000).encode())) is False  # 120 KB
