"""The request and response transformers through a running gateway."""

from __future__ import annotations

import json

from conftest import every_policy_pipeline as config


def test_request_and_response_transformers(start_gateway, upstreams):
    steps = """\
- request-transformer:
    - action:
        headers: {add: {X-Gw: "'yes'", X-Method: req.method}, remove: [X-Internal]}
        body: {add: {source: "'gateway'", who: "req.headers['x-who']"}, remove: [secret]}
- response-transformer:
    - action:
        headers: {add: {X-Served-By: "'mitmgateway'"}, remove: [Server]}
        body: {add: {gateway: "true"}, remove: [headers]}
- proxy: [{action: {serviceEndpoint: backend}}]"""
    gateway = start_gateway(config(upstreams["customers"].url, steps))
    reply = gateway.send(
        "/orders",
        method="POST",
        headers={"Content-Type": "application/json", "X-Internal": "1", "X-Who": "alice"},
        body=json.dumps({"item": 7, "secret": "s"}).encode(),
    )
    assert reply.status == 200
    assert reply.headers["X-Served-By"] == "mitmgateway" and "Server" not in reply.headers
    echoed = json.loads(reply.body)
    assert echoed["gateway"] is True and "headers" not in echoed, "the response body was transformed"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert json.loads(echoed["body"]) == {"item": 7, "source": "gateway", "who": "alice"}

    plain = gateway.send("/orders", method="POST", headers={"Content-Type": "text/plain"}, body=b"not json")
    assert json.loads(plain.body)["body"] == "not json", "a non-JSON body passes untouched"
