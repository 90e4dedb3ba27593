"""A plugin loaded from the config, and errors: {format: json} across the gateway's own answers."""

from __future__ import annotations

import json
import shutil

from conftest import one_pipeline
from harness import ROOT, free_port


def test_the_example_plugin_is_loaded_from_the_config(start_gateway, upstreams, tmp_path):
    shutil.copy(ROOT / "examples" / "plugins" / "acme_policies.py", tmp_path / "acme_policies.py")
    steps = """\
- acme-tenant:
    - condition: {name: acme-header, header: X-Beta, value: "1"}
      action: {tenants: [blue, green]}
- proxy: [{action: {serviceEndpoint: backend}}]"""
    config = one_pipeline(upstreams["customers"].url, steps).replace(
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]",
        "plugins: [acme_policies]\npolicies: [acme-tenant, proxy]",
    )
    gateway = start_gateway(config)
    assert gateway.send(headers={"X-Beta": "1", "X-Tenant": "red"}).status == 403
    ok = gateway.send(headers={"X-Beta": "1", "X-Tenant": "blue", "X-Acme-Tenant": "spoof"})
    assert ok.status == 200
    seen = {k.lower(): v for k, v in json.loads(ok.body)["headers"].items()}
    assert seen["x-acme-tenant"] == "blue"
    skipped = gateway.send(headers={"X-Acme-Tenant": "spoof"})  # condition false: step skipped
    assert "x-acme-tenant" not in {k.lower() for k in json.loads(skipped.body)["headers"]}


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
