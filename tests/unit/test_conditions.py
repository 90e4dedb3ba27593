"""Every condition, compiled from its config form and evaluated on mitmproxy test flows."""

from __future__ import annotations

import pytest

from gateway_unit import make_flow
from mitmgateway.clients import ClientIdentification
from mitmgateway.conditions import parse_condition
from mitmgateway.config.errors import KeyPath
from mitmgateway.context import RequestContext
from mitmgateway.routing import hostname_of


def evaluate(condition: dict, *, user: dict | None = None, **flow_kwargs) -> bool:
    flow = make_flow(**flow_kwargs)
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
