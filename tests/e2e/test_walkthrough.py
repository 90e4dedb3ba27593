"""Express Gateway's walkthrough, through a real mitmdump with our addon and real upstreams."""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import one_pipeline
from harness import bearer, free_port


@pytest.fixture
def gateway(start_gateway, walkthrough_config):
    return start_gateway(walkthrough_config)


def test_request_without_token_is_401(gateway):
    reply = gateway.send("/customers/1", host="customers.local")
    assert reply.status == 401
    assert reply.text == "Unauthorized"
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_second_request_within_the_window_is_429_before_authentication(gateway):
    first = gateway.send("/", host="customers.local")
    second = gateway.send("/", host="customers.local")
    assert first.status == 401
    assert second.status == 429
    assert second.reason == "Too Many Requests"
    assert second.text == "Too many requests, please try again later."
    assert second.headers["X-RateLimit-Limit"] == "1"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(second.headers["Retry-After"]) <= 1
    assert int(second.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert "WWW-Authenticate" not in second.headers


def test_valid_token_reaches_the_service_by_host_with_host_rewritten(gateway, token, upstreams):
    for name in ("customers", "orders"):
        reply = gateway.send("/items/7?full=1", host=f"{name}.local", headers=bearer(token))
        assert reply.status == 200, reply.text
        seen = json.loads(reply.body)
        assert seen["service"] == name
        assert seen["path"] == "/items/7?full=1"
        assert seen["headers"]["Host"] == f"127.0.0.1:{upstreams[name].port}"
        assert seen["headers"]["X-Forwarded-Host"] == f"{name}.local"
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
        assert seen["headers"]["X-Forwarded-Proto"] == "http"
        assert len(seen["headers"]["X-Request-Id"]) == 32
        assert reply.headers["X-RateLimit-Limit"] == "1"
        assert reply.headers["X-RateLimit-Remaining"] == "0"


def test_host_matching_ignores_case_and_port(gateway, token):
    reply = gateway.send("/", host=f"ORDERS.local:{gateway.port}", headers=bearer(token))
    assert reply.status == 200
    assert json.loads(reply.body)["service"] == "orders"


def test_limits_are_per_pipeline(gateway, token):
    assert gateway.send("/", host="customers.local", headers=bearer(token)).status == 200
    assert gateway.send("/", host="orders.local", headers=bearer(token)).status == 200
    assert gateway.send("/", host="orders.local", headers=bearer(token)).status == 429


def test_unknown_host_is_404(gateway):
    reply = gateway.send("/", host="billing.local")
    assert (reply.status, reply.text) == (404, "Not Found")


def test_json_clients_get_json_answers(gateway):
    reply = gateway.send("/", host="customers.local", headers={"Accept": "application/json"})
    assert reply.status == 401
    assert reply.headers["Content-Type"].startswith("application/json")
    assert json.loads(reply.body) == {"message": "Unauthorized"}


def test_bad_token_is_401_invalid_token(gateway, token):
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    reply = gateway.send("/", host="customers.local", headers=bearer(tampered))
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_upstream_down_is_502(start_gateway):
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway(one_pipeline(dead, "- proxy: [{action: {serviceEndpoint: backend}}]"))
    reply = gateway.send("/", host="anything.local")
    assert (reply.status, reply.text) == (502, "Bad gateway.")
    # The gateway is still up and answers the next request the same way.
    assert gateway.send("/", host="anything.local").status == 502


def test_slow_upstream_is_504_and_the_gateway_keeps_serving(start_gateway, upstreams):
    steps = "- proxy: [{action: {serviceEndpoint: backend, proxyTimeout: 300}}]"
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, steps))
    reply = gateway.send("/slow?delay=2", host="orders.local")
    assert (reply.status, reply.text) == (504, "Gateway Timeout")
    fast = gateway.send("/fast?delay=0.05", host="orders.local")
    assert fast.status == 200
    assert json.loads(fast.body)["path"] == "/fast?delay=0.05"


def absolute_form(port: int, target: bytes, host: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target, host))
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def test_an_absolute_form_target_is_routed_by_its_own_host_and_sent_in_origin_form(start_gateway, upstreams):
    config = one_pipeline(
        upstreams["customers"].url,
        "- proxy: [{action: {serviceEndpoint: backend}}]",
        endpoint="host: customers.local",
    )
    gateway = start_gateway(config)
    # RFC 9112 3.2.2: the target's authority is the host, whatever Host says.
    head, _ = absolute_form(gateway.port, b"http://internal-admin.local/secret", b"customers.local")
    assert head.startswith(b"HTTP/1.1 404"), head
    head, body = absolute_form(gateway.port, b"http://customers.local/secret", b"internal-admin.local")
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed = json.loads(body)
    assert echoed["path"] == "/secret", "the upstream must get an origin-form target"
    assert echoed["headers"]["Host"] == f"127.0.0.1:{upstreams['customers'].port}"
