"""cors through a running gateway: preflights answered, actual requests marked."""

from __future__ import annotations

import json

from conftest import every_policy_pipeline as config


def test_cors_preflight_and_actual_requests(start_gateway, upstreams):
    steps = """\
- cors:
    - action:
        origin: [https://shop.example.com, '/^https://[a-z]+\\.partner\\.example$/']
        credentials: true
        exposedHeaders: [X-Request-Id]
        maxAge: 600
- proxy: [{action: {serviceEndpoint: backend}}]"""
    gateway = start_gateway(config(upstreams["customers"].url, steps))
    preflight = gateway.send(
        "/orders",
        method="OPTIONS",
        headers={
            "Origin": "https://a.partner.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )
    assert preflight.status == 204 and preflight.body == b""
    h = preflight.headers
    assert h["Access-Control-Allow-Origin"] == "https://a.partner.example"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
    assert h["Access-Control-Allow-Headers"] == "content-type,x-api-key"
    assert h["Access-Control-Max-Age"] == "600"
    assert "Origin" in h["Vary"] and "Access-Control-Request-Headers" in h["Vary"]

    actual = gateway.send("/orders", headers={"Origin": "https://shop.example.com"})
    assert actual.status == 200 and json.loads(actual.body)["service"] == "customers"
    assert actual.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert actual.headers["Access-Control-Expose-Headers"] == "X-Request-Id"
    for stranger in ("https://evil.example", "https://a.partner.example.evil.net"):
        reply = gateway.send("/orders", headers={"Origin": stranger})
        assert reply.status == 200 and "Access-Control-Allow-Origin" not in reply.headers, stranger
