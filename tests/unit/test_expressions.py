"""The safe expression language: its grammar, its refusals, and the policies built on it."""

from __future__ import annotations

import pytest

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow
from mitmgateway.config import ConfigError
from mitmgateway.config.errors import KeyPath
from mitmgateway.context import RequestContext
from mitmgateway.expressions import compile_assignments, compile_expression

PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"


@pytest.fixture
def context(tmp_path):
    config = one_pipeline("http://127.0.0.1:9", PROXY).replace("{port}", "8080")
    with gateway_for(tmp_path, config) as gateway:

        def make(path: str = "/orders?id=7", method: str = "GET", **headers: str) -> RequestContext:
            flow = make_flow(path=path, method=method, headers={"X-Tier": "gold", **headers})
            route = gateway.config.router.match("api.local", flow.request.path, method)
            ctx = RequestContext(flow, route, "api.local", gateway.config.clients.identify(flow))
            ctx.user = {"sub": "alice", "roles": ["admin"], "tier": 2}
            return ctx

        yield make


@pytest.mark.parametrize(
    "source,expected",
    [
        ("req.method == 'GET' and req.headers['x-tier'] == 'gold'", True),
        ("req.method === 'GET' && req.headers['X-TIER'] !== 'silver'", True),
        ("!(req.method == 'POST') || false", True),
        ("req.path", "/orders"),
        ("req.url", "/orders?id=7"),
        ("req.query.id", "7"),
        ("req.query['missing']", None),
        ("user.sub + '@example.com'", "alice@example.com"),
        ("user.tier + 1", 3),
        ("consumer.nothing.deeper", None),
        ("'admin' in user.roles", True),
        ("'ops' not in user.roles", True),
        ("user.tier >= 2 and user.tier < 3", True),
        ("req.headers.missing > 1", False),
        ("'x-tier' in req.headers", True),
        ("apiEndpoint.name", "api"),
        ("req.ip", "192.0.2.10"),
        ("'a;b' + \"&&\"", "a;b&&"),
        ("null == undefined", True),
        ("-user.tier", -2),
        # A request can never make an expression fail, and && / || give values as in JavaScript.
        ("req.headers['x-tier'] > 3", False),
        ("'o' in req.headers['x-tier']", False),
        ("'a' in req", False),
        ("req.query[user.roles]", None),
        ("req + ''", None),
        ("req.query.lang || 'en'", "en"),
        ("user.sub && user.tier", 2),
    ],
)
def test_expressions_evaluate(context, source, expected):
    assert compile_expression(source, KeyPath("x"))(context()) == expected


@pytest.mark.parametrize(
    "source,reason",
    [
        ("__import__('os').system('id')", "cannot use Call in an expression"),
        ("req.method.upper()", "cannot use Call in an expression"),
        ("os.environ", "unknown name 'os'"),
        # A misspelt request member is a config error, not a null on every request.
        ("req.methd == 'GET'", "unknown member req.methd"),
        ("lambda: 1", "cannot use Lambda in an expression"),
        ("[x for x in req.headers]", "cannot use ListComp in an expression"),
        ("user.tier * 2", "cannot use BinOp in an expression"),
        ("req.method is None", "cannot use that comparison"),
        ("req.method ==", "cannot parse the expression"),
        ("f'{req}'", "cannot use JoinedStr in an expression"),
    ],
)
def test_expressions_refused_at_load(source, reason):
    with pytest.raises(ConfigError) as info:
        compile_expression(source, KeyPath("pipelines.p.policies[0].headers[0].action.forwardHeaders.X"))
    assert str(info.value).startswith("pipelines.p.policies[0].headers[0].action.forwardHeaders.X: " + reason)


def test_assignments(context):
    ctx = context(**{"X-Remove": "1"})
    for assign in compile_assignments(
        "req.url = '/v2' + req.url; req.headers['x-user'] = user.sub\nreq.headers['x-remove'] = null",
        KeyPath("jscode"),
    ):
        assign(ctx)
    request = ctx.flow.request
    assert request.path == "/v2/orders?id=7"
    assert request.headers["X-User"] == "alice"
    assert "X-Remove" not in request.headers
    for assign in compile_assignments(
        "req.url = '/x?q=' + req.headers['x-evil']; req.headers[req.headers['x-evil']] = 'y'", KeyPath("j")
    ):
        ctx = context(**{"X-Evil": "a\r\nInjected: 1"})
        assign(ctx)
        assert ctx.flow.request.path == "/orders?id=7", "a URL with a line break is not taken"
        assert "Injected" not in ctx.flow.request.headers
    # An assigned url is put in canonical form, and one that form refuses is not taken.
    (to_files,) = compile_assignments("req.url = '/files/' + req.headers['x-name']", KeyPath("j"))
    for name, path in [
        ("%61//b", "/files/a/b"),
        ("..%2Fadmin", "/orders?id=7"),
        ("../admin", "/orders?id=7"),
    ]:
        ctx = context(**{"X-Name": name})
        to_files(ctx)
        assert ctx.flow.request.path == path, name
    for source in ("user.sub = 'x'", "req.method = 'POST'", "req.url == '/'", "del req.url"):
        with pytest.raises(ConfigError):
            compile_assignments(source, KeyPath("jscode"))
