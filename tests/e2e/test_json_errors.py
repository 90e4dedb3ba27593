"""errors: {format: json}: one shape across the gateway's own answers."""

from __future__ import annotations

import json

from conftest import one_pipeline
from harness import free_port


def test_json_errors_give_one_shape(start_gateway, upstreams):
    dead = f"http://127.0.0.1:{free_port()}"
    config = (
        one_pipeline(
            dead,
            "- rate-limit: [{action: {max: 1}}]\n- key-auth: [{action: {}}]\n"
            "- proxy: [{action: {serviceEndpoint: backend}}]",
            endpoint="host: api.local",
        )
        + "errors: {format: json}\n"
    )
    gateway = start_gateway(config)

    def error(reply) -> dict:  # type: ignore[no-untyped-def]
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        body = json.loads(reply.body)
        assert set(body) == {"error", "message", "requestId"}
        return body

    unauthorized = gateway.send(host="api.local")
    assert unauthorized.status == 401
    body = error(unauthorized)
    assert (body["error"], body["message"]) == ("Unauthorized", "Unauthorized")
    assert body["requestId"] == unauthorized.headers["X-Request-Id"]
    limited = gateway.send(host="api.local")
    assert limited.status == 429 and limited.headers["Retry-After"]
    assert error(limited)["message"] == "Too many requests, please try again later."
    not_found = gateway.send(host="elsewhere.local")
    assert (not_found.status, error(not_found)["error"]) == (404, "Not Found")


def test_json_errors_include_upstream_failures(start_gateway):
    dead = f"http://127.0.0.1:{free_port()}"
    config = (
        one_pipeline(dead, "- proxy: [{action: {serviceEndpoint: backend}}]") + "errors: {format: json}\n"
    )
    gateway = start_gateway(config)
    reply = gateway.send("/")
    assert reply.status == 502
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(reply.body) == {"error": "Bad Gateway", "message": "Bad gateway.", "requestId": None}
