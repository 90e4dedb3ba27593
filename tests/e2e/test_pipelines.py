"""Conditions and mitmweb's view of the gateway's decisions, on real processes."""

from __future__ import annotations

import json
import urllib.request

from conftest import every_policy_pipeline, one_pipeline
from harness import free_port, wait_for_port


def test_conditions_choose_which_steps_run(start_gateway, upstreams, rsa_keys, token):
    steps = f"""
- jwt:
  - condition: {{name: not, condition: {{name: method, methods: [GET, HEAD]}}}}
    action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false}}
- rate-limit:
  - condition: {{name: anonymous}}
    action: {{max: 1, windowMs: 60000}}
  - condition: {{name: allOf, conditions: [{{name: authenticated}}, {{name: pathExact, path: /limited}}]}}
    action: {{max: 1, windowMs: 60000, message: authenticated limit}}
- proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""
    gateway = start_gateway(one_pipeline(upstreams["customers"].url, steps))
    auth = {"Authorization": f"Bearer {token}"}
    # Reads need no token, but anonymous clients are limited.
    assert gateway.send("/", host="x.local").status == 200
    assert gateway.send("/", host="x.local").status == 429
    # Writes need a token; authenticated requests skip the anonymous limit...
    assert gateway.send("/", host="x.local", method="POST", body=b"{}").status == 401
    for _ in range(3):
        assert gateway.send("/", host="x.local", method="POST", body=b"{}", headers=auth).status == 200
    # ...but not the one on /limited.
    assert gateway.send("/limited", host="x.local", method="POST", body=b"", headers=auth).status == 200
    limited = gateway.send("/limited", host="x.local", method="POST", body=b"", headers=auth)
    assert (limited.status, limited.text) == (429, "authenticated limit")


def test_mitmweb_shows_endpoint_pipeline_and_deciding_policy(start_gateway, walkthrough_config, token):
    web_port = free_port()
    gateway = start_gateway(
        walkthrough_config,
        runner="mitmweb",
        options=("web_open_browser=false", f"web_port={web_port}", "web_host=127.0.0.1"),
    )
    wait_for_port(web_port, gateway.process, gateway.log_path)
    assert gateway.send("/", host="orders.local").status == 401
    assert (
        gateway.send("/", host="customers.local", headers={"Authorization": f"Bearer {token}"}).status == 200
    )
    assert gateway.send("/", host="billing.local").status == 404

    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/flows", timeout=10) as response:
        flows = {f["request"]["pretty_host"]: f for f in json.load(response)}
    rejected = flows["orders.local"]
    # The reason too, and (for a proxied flow, listed under its upstream) the client's Host and path.
    assert (
        rejected["comment"]
        == "gateway: apiEndpoint orders → pipeline orders; answered 401 by jwt (token missing)"
    )
    assert rejected["marked"]
    proxied = flows["127.0.0.1"]
    assert proxied["comment"].startswith(
        "gateway: apiEndpoint customers → pipeline customers; customers.local/ proxied to 127.0.0.1:"
    )
    assert not proxied["marked"]
    assert (
        flows["billing.local"]["comment"] == "gateway: no apiEndpoint matched; answered 404 by no apiEndpoint"
    )

    def content_view(flow: dict, message: str, view: str) -> dict:
        url = f"http://127.0.0.1:{web_port}/flows/{flow['id']}/{message}/content/{view}.json"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def text(view: dict) -> list[str]:
        return ["".join(part for _, part in line) for line in view["lines"]]

    # The Gateway content view: mitmweb's default for the gateway's own answer, with its body.
    refused = content_view(rejected, "response", "auto")
    assert refused["description"] == "gateway decision"
    client = "client: 127.0.0.1"
    assert text(refused)[:5] == [
        "client asked: GET orders.local/",
        client,
        "apiEndpoint: orders",
        "pipeline: orders",
        "answered by: jwt → 401 (token missing)",
    ]
    assert text(refused)[-1] == "Unauthorized"
    # In the view menu of a proxied flow, whose list entry names the upstream.
    upstream = proxied["request"]["host"]
    assert text(content_view(proxied, "request", "gateway"))[:5] == [
        "client asked: GET customers.local/",
        client,
        "apiEndpoint: customers",
        "pipeline: customers",
        f"proxied to: {upstream}:{proxied['request']['port']}",
    ]
    # The upstream's own answer keeps its usual view.
    assert content_view(proxied, "response", "auto")["description"] != "gateway decision"


def test_one_pipeline_with_every_policy(start_gateway, upstreams, tmp_path, rsa_keys):
    from consumers_fixture import write_consumers

    write_consumers(tmp_path)
    steps = f"""\
- log: [{{action: {{message: 'request ${{req.method}} ${{req.path}}'}}}}]
- cors: [{{action: {{origin: '*'}}}}]
- rate-limit: [{{action: {{max: 100}}}}]
- key-auth:
    - condition: {{name: expression, expression: "req.headers['authorization'] != null"}}
      action: {{}}
- basic-auth: [{{condition: {{name: never}}, action: {{}}}}]
- jwt: [{{condition: {{name: never}}, action: {{secretOrPublicKeyFile: {rsa_keys[1]}}}}}]
- terminate: [{{condition: {{name: anonymous}}, action: {{statusCode: 401, message: 'Who are you?'}}}}]
- cache: [{{action: {{cacheAuthorized: true}}}}]
- expression: [{{action: {{jscode: "req.headers['x-consumer'] = user.id"}}}}]
- headers: [{{action: {{forwardHeaders: {{X-Req: requestID}}}}}}]
- request-transformer: [{{action: {{headers: {{add: {{X-Added: "'1'"}}}}}}}}]
- response-transformer: [{{action: {{headers: {{add: {{X-Done: "'1'"}}}}}}}}]
- proxy: [{{action: {{serviceEndpoint: backend}}}}]"""
    gateway = start_gateway(every_policy_pipeline(upstreams["orders"].url, steps))
    refused = gateway.send("/orders")
    assert (refused.status, refused.text) == (401, "Who are you?")
    ok = gateway.send("/orders", headers={"Authorization": "apiKey k1:topsecret", "Origin": "https://x"})
    assert ok.status == 200, ok.text
    assert ok.headers["X-Done"] == "1" and ok.headers["Access-Control-Allow-Origin"] == "*"
    seen = {k.lower(): v for k, v in json.loads(ok.body)["headers"].items()}
    assert (seen["x-consumer"], seen["x-added"]) == ("alice", "1")
    again = gateway.send("/orders", headers={"Authorization": "apiKey k1:topsecret", "Origin": "https://x"})
    assert again.headers["X-Cache"] == "HIT" and again.body == ok.body
    assert "request GET /orders" in gateway.log()


def test_policies_built_on_expressions_through_a_running_gateway(start_gateway, upstreams):
    steps = """\
- log: [{action: {message: 'seen ${req.method} ${req.path} tier=${req.headers.x-tier}'}}]
- terminate:
    - condition: {name: expression, expression: "req.headers['x-block'] == 'yes'"}
      action: {statusCode: 451, message: Blocked}
- expression:
    - action:
        jscode: "req.url = '/v2' + req.url; req.headers['x-tier-seen'] = req.headers['x-tier']"
- headers:
    - action:
        headersPrefix: X-Gw-
        forwardHeaders: {Lit: "'yes'", Method: req.method, Nothing: req.headers.nope}
- proxy: [{action: {serviceEndpoint: backend}}]"""
    config = one_pipeline(upstreams["customers"].url, steps).replace(
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]",
        "policies: [log, terminate, expression, headers, proxy]",
    )
    gateway = start_gateway(config)
    reply = gateway.send("/orders", headers={"X-Tier": "gold", "X-Gw-Nothing": "spoofed"})
    assert reply.status == 200
    echoed = json.loads(reply.body)
    seen = {k.lower(): v for k, v in echoed["headers"].items()}
    assert echoed["path"] == "/v2/orders"
    assert (seen["x-tier-seen"], seen["x-gw-lit"], seen["x-gw-method"]) == ("gold", "yes", "GET")
    assert "x-gw-nothing" not in seen, "a client's copy of a header the gateway sets never passes"
    blocked = gateway.send("/orders", headers={"X-Block": "yes"})
    assert (blocked.status, blocked.text) == (451, "Blocked")
    assert "seen GET /orders tier=gold" in gateway.log()
    assert "seen GET /orders tier=-" in gateway.log()
