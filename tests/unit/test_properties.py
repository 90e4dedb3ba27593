"""Property-based tests: whatever the input, a clear answer and never a crash or a wrong accept."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_unit import gateway_for, make_flow
from harness import b64url
from mitmgateway.clients import ClientIdentification
from mitmgateway.config import ConfigError
from mitmgateway.config.assemble import build_config
from mitmgateway.config.errors import KeyPath
from mitmgateway.context import RequestContext
from mitmgateway.expressions import compile_expression
from mitmgateway.policies import StepState
from mitmgateway.routing import Router, hostname_of, parse_api_endpoint
from mitmgateway.templates import parse_template

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


# The router against a reference model (#7): hosts exact, `*.domain` or `*`; Express paths;
# methods. The model is the rule as the README states it, written the plain way: exact hosts
# first, then `*.domain` ones with more labels first, then `*`, config order within each; the
# first endpoint whose host, method and path all match wins.
ROUTER_SETTINGS = settings(max_examples=300, deadline=None)
labels = st.sampled_from(["api", "orders", "Orders", "local", "example", "x"])
exact_hosts = st.lists(labels, min_size=1, max_size=3).map(".".join)
configured_hosts = exact_hosts | exact_hosts.map("*.{}".format) | st.just("*")
path_patterns = st.sampled_from(["/", "/status", "/api/*", "/api/v1/*", "/users/:id", "/users/:id/orders"])
methods = st.sampled_from(["GET", "POST", "DELETE"])
endpoints = st.fixed_dictionaries(
    {"host": configured_hosts},
    optional={
        "paths": st.lists(path_patterns, min_size=1, max_size=2),
        "methods": st.lists(methods, min_size=1, max_size=2),
    },
)
segments = st.sampled_from(["api", "API", "v1", "users", "42", "orders", "status", "x", ""])
request_paths = st.builds(
    lambda parts, query: "/" + "/".join(parts) + query,
    st.lists(segments, max_size=4),
    st.sampled_from(["", "?q=1", "?a=/api/x"]),
)


def host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    wanted, got = pattern.lower().split("."), host.split(".")
    # `*` stands for exactly one label (never an empty one).
    return len(wanted) == len(got) and all(
        w == g or (w == "*" and g) for w, g in zip(wanted, got, strict=True)
    )


def path_matches(pattern: str, path: str) -> bool:
    """Express's rules for the patterns drawn above: case-insensitive, one trailing slash allowed,
    `*` anything below the prefix, `:param` one non-empty segment."""
    path, pattern = path.lower(), pattern.lower()
    if pattern == "/":
        return path == "/"
    if pattern.endswith("/*"):
        return path.startswith(pattern[:-1])
    if path.endswith("/"):
        path = path[:-1]
    wanted, got = pattern.split("/"), path.split("/")
    return len(wanted) == len(got) and all(
        w == g or (w.startswith(":") and g != "") for w, g in zip(wanted, got, strict=True)
    )


def model_route(configured: list[dict[str, Any]], host: str, path: str, method: str) -> int | None:
    """The index of the endpoint that should serve the request, or None."""
    hostname = host.rpartition(":")[0].lower() if ":" in host else host.lower()
    path = path.partition("?")[0]

    def rank(i: int) -> tuple[int, int]:
        pattern = configured[i]["host"]
        if pattern == "*":
            return (2, i)
        return (1, -pattern.count(".")) if "*" in pattern else (0, 0)

    for i in sorted(range(len(configured)), key=lambda i: (*rank(i), i)):
        endpoint = configured[i]
        if not host_matches(endpoint["host"], hostname):
            continue
        if "methods" in endpoint and method not in endpoint["methods"]:
            continue
        if "paths" in endpoint and not any(path_matches(p, path) for p in endpoint["paths"]):
            continue
        return i
    return None


def fill_path(pattern: str, fill: str, suffix: str, swapcase: bool) -> str:
    """A path for `pattern`: its `*` and `:id` filled in, then a suffix, or `<cut>` short by one
    character (``/api`` for ``/api/*``)."""
    path = pattern.replace(":id", fill).replace("*", fill)
    path = (path[:-1] or "/") if suffix == "<cut>" else path + suffix
    return path.swapcase() if swapcase else path


def near(configured: list[dict[str, Any]]) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """Hosts and paths close to the configured ones (a wildcard filled in, another case, a
    trailing slash), so that most examples test a match rather than a miss."""
    hosts = [e["host"] for e in configured if e["host"] != "*"]
    patterns = [p for e in configured for p in e.get("paths", ())]
    filled_hosts = st.sampled_from(hosts or ["api.local"]).flatmap(
        lambda h: st.tuples(labels, st.booleans()).map(
            lambda fill: (
                (h.replace("*", fill[0]) if fill[0] else h).swapcase() if fill[1] else h.replace("*", fill[0])
            )
        )
    )
    filled_paths = st.builds(
        fill_path,
        st.sampled_from(patterns or ["/"]),
        st.sampled_from(["42", "x/y", "", "a"]),
        st.sampled_from(["", "/", "//", "?q=1", "x", "<cut>"]),
        st.booleans(),
    )
    return exact_hosts | filled_hosts, request_paths | filled_paths


@ROUTER_SETTINGS
@given(
    configured=st.lists(endpoints, min_size=1, max_size=4),
    port=st.none() | st.integers(1, 65535),
    method=methods,
    data=st.data(),
)
def test_the_router_matches_as_the_reference_model(configured, port, method, data):
    router = Router(
        (f"e{i}", parse_api_endpoint(raw, KeyPath(f"e{i}")), None, KeyPath(f"e{i}"))
        for i, raw in enumerate(configured)
    )
    hosts, paths = near(configured)
    requested, path = data.draw(hosts, label="host"), data.draw(paths, label="path")
    host_header = requested if port is None else f"{requested}:{port}"
    found = router.match(hostname_of(host_header), path, method)
    expected = model_route(configured, host_header, path, method)
    assert (found.api_endpoint_name if found else None) == (None if expected is None else f"e{expected}")


# EG's `${...}` templates (rateLimitBy, the log policy's message): any text is a template or one
# ConfigError at load, and a loaded one renders any request without raising.
template_pieces = st.sampled_from(
    [
        "${",
        "}",
        "$",
        "{",
        " ",
        "req.ip",
        "req.hostname",
        "req.method",
        "req.path",
        "req.headers.",
        "req.user.",
        "user.",
        "x-api-key",
        "sub",
        "n",
        "roles",
        "unknown",
        "key-",
        "\\",
        "\n",
    ]
)
template_texts = st.lists(template_pieces | st.text(max_size=4), max_size=12).map("".join)
claims_values = st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)


@settings(max_examples=300, deadline=None)
@given(
    text=template_texts,
    user=st.none() | st.dictionaries(st.sampled_from(["sub", "n", "roles"]), claims_values, max_size=3),
    headers=st.dictionaries(
        st.sampled_from(["X-Api-Key", "X-Other"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=5),
        max_size=2,
    ),
)
def test_any_template_compiles_or_is_refused_and_never_fails_on_a_request(text, user, headers):
    try:
        template = parse_template(text, KeyPath("rateLimitBy"))
    except ConfigError as e:
        assert e.reason and "Traceback" not in str(e)
        return
    flow = make_flow(headers=headers)
    route = Router([("api", parse_api_endpoint({}, KeyPath("api")), None, KeyPath("api"))]).match(
        "api.local", "/", "GET"
    )
    assert route is not None
    ctx = RequestContext(flow, route, "api.local", ClientIdentification("192.0.2.10", None))
    ctx.user = user
    rendered = template.render(ctx)
    assert rendered is None or isinstance(rendered, str)
    assert isinstance(template.render(ctx, missing="-"), str)
    if "${" not in text:
        assert rendered == text, "text without references is taken literally"


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
        ctx = RequestContext(flow, route, "api.local", gateway.config.clients.identify(flow))
        ctx.user = {"sub": "alice", "n": 3, "roles": ["a"]}
        evaluate(ctx)


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
        forged = ".".join([b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode()), payload, signature])
    elif mutation == "payload":
        claims = data.draw(
            st.dictionaries(st.sampled_from(["sub", "exp", "admin"]), st.integers() | st.text(max_size=5))
        )
        # JSON, as a real payload: a verifier that skipped the signature would accept it.
        forged = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    elif mutation == "signature":
        forged = f"{header}.{payload}.{b64url(data.draw(st.binary(max_size=300)))}"
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
        # CR, LF or NUL in the header: the front door refuses it before any step.
        expected = 400 if any(c in forged for c in "\r\n\x00") else 401
        assert flow.response is not None and flow.response.status_code == expected
        genuine_flow = make_flow(headers={"Authorization": f"Bearer {token}"})
        gateway.requestheaders(genuine_flow)
        assert genuine_flow.response is None
