"""Property-based tests: whatever the input, a clear answer and never a crash or a wrong accept."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_unit import gateway_for, make_flow
from mitmgateway.config import ConfigError
from mitmgateway.config.errors import KeyPath
from mitmgateway.config.loader import build_config
from mitmgateway.expressions import compile_expression
from mitmgateway.pipeline import RequestContext
from mitmgateway.policies import StepState
from mitmgateway.routing import hostname_of

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(max_size=20)
)
keys = st.sampled_from(
    [
        "http",
        "port",
        "hostname",
        "apiEndpoints",
        "host",
        "paths",
        "methods",
        "serviceEndpoints",
        "url",
        "urls",
        "policies",
        "pipelines",
        "proxy",
        "rate-limit",
        "jwt",
        "action",
        "condition",
        "name",
        "max",
        "windowMs",
        "serviceEndpoint",
        "api",
        "backend",
        "main",
        "rateLimitStore",
        "type",
    ]
) | st.text(max_size=8)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@SETTINGS
@given(document=documents)
def test_any_document_is_a_config_or_one_clear_error(document, tmp_path_factory):
    try:
        build_config(document, tmp_path_factory.getbasetemp() / "gateway.config.yml", StepState())
    except ConfigError as e:
        assert e.reason and "Traceback" not in str(e)


labels = st.sampled_from(["api", "orders", "Orders", "ORDERS", "local", "example", "com", "x"])
hosts = st.lists(labels, min_size=1, max_size=3).map(".".join)


@SETTINGS
@given(
    configured=hosts,
    requested=hosts,
    port=st.none() | st.integers(1, 65535),
    method=st.sampled_from(["GET", "POST"]),
)
def test_the_router_matches_hosts_as_the_reference_model(
    configured, requested, port, method, tmp_path_factory
):
    document = {
        "http": {"port": 8080},
        "apiEndpoints": {"api": {"host": configured, "paths": ["/v1/*"], "methods": ["GET"]}},
        "serviceEndpoints": {"backend": {"url": "http://127.0.0.1:9"}},
        "policies": ["proxy"],
        "pipelines": {
            "main": {
                "apiEndpoints": ["api"],
                "policies": [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}],
            }
        },
    }
    config = build_config(document, tmp_path_factory.getbasetemp() / "g.yml", StepState())
    host_header = requested if port is None else f"{requested}:{port}"
    # Express: /v1/* needs the slash; any case; the query aside.
    for path, path_ok in (("/v1/items", True), ("/v1", False), ("/v2/items", False), ("/V1/x?y=1", True)):
        expected = requested.lower() == configured.lower() and path_ok and method == "GET"
        assert (config.router.match(hostname_of(host_header), path, method) is not None) == expected


@SETTINGS
@given(source=st.text(max_size=60))
def test_any_expression_compiles_or_is_refused_and_never_fails_on_a_request(source, tmp_path_factory):
    try:
        evaluate = compile_expression(source, KeyPath("x"))
    except ConfigError:
        return
    directory = tmp_path_factory.mktemp("expr")
    config = (
        "http: {port: 8080}\napiEndpoints: {api: {host: '*'}}\n"
        "serviceEndpoints: {b: {url: 'http://127.0.0.1:9'}}\npolicies: [proxy]\n"
        "pipelines: {p: {apiEndpoints: [api], policies: [{proxy: [{action: {serviceEndpoint: b}}]}]}}\n"
    )
    with gateway_for(directory, config) as gateway:
        flow = make_flow(headers={"X-A": "1", "X-Tier": "gold"})
        route = gateway.config.router.match("api.local", "/", "GET")
        ctx = RequestContext(flow, route, "api.local", gateway.config.clients.identify(flow), {})
        ctx.user = {"sub": "alice", "n": 3, "roles": ["a"]}
        evaluate(ctx)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def genuine(tmp_path_factory, rsa_keys):
    private = serialization.load_pem_private_key(rsa_keys[0].read_bytes(), None)
    token = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, private, "RS256")
    return token, rsa_keys


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_only_the_genuine_token_is_accepted(data, genuine, tmp_path_factory):
    token, keys = genuine
    header, payload, signature = token.split(".")
    mutation = data.draw(st.sampled_from(["truncate", "flip", "alg", "payload", "signature", "junk"]))
    if mutation == "truncate":
        forged = token[: data.draw(st.integers(0, len(token) - 1))]
    elif mutation == "flip":
        i = data.draw(st.integers(0, len(token) - 1))
        replacement = data.draw(st.sampled_from("ABCxyz019-_."))
        forged = token[:i] + replacement + token[i + 1 :]
    elif mutation == "alg":
        alg = data.draw(st.sampled_from(["none", "HS256", "ES256", "PS256", "RS512", "None", ""]))
        forged = ".".join([_b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()), payload, signature])
    elif mutation == "payload":
        claims = data.draw(
            st.dictionaries(st.sampled_from(["sub", "exp", "admin"]), st.integers() | st.text(max_size=5))
        )
        forged = f"{header}.{_b64(str(claims).encode())}.{signature}"
    elif mutation == "signature":
        forged = f"{header}.{payload}.{_b64(data.draw(st.binary(max_size=300)))}"
    else:
        forged = data.draw(st.text(max_size=80))
    if forged == token:
        return
    directory: Path = tmp_path_factory.mktemp("jwt")
    config = (
        "http: {port: 8080}\napiEndpoints: {api: {host: '*'}}\n"
        "serviceEndpoints: {b: {url: 'http://127.0.0.1:9'}}\npolicies: [jwt, proxy]\n"
        "pipelines: {p: {apiEndpoints: [api], policies: ["
        f"{{jwt: [{{action: {{secretOrPublicKeyFile: {keys[1]}, checkCredentialExistence: false}}}}]}}, "
        "{proxy: [{action: {serviceEndpoint: b}}]}]}}\n"
    )
    with gateway_for(directory, config) as gateway:
        flow = make_flow(headers={"Authorization": f"Bearer {forged}"})
        gateway.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 401
        genuine_flow = make_flow(headers={"Authorization": f"Bearer {token}"})
        gateway.requestheaders(genuine_flow)
        assert genuine_flow.response is None
