"""cors and the transformers through a running gateway, and one pipeline using every policy."""

from __future__ import annotations

import json
import time

from conftest import one_pipeline

ALL_POLICIES = (
    "policies: [cache, log, cors, rate-limit, key-auth, expression, headers, request-transformer, "
    "response-transformer, terminate, proxy, jwt, basic-auth]"
)


def config(upstream_url: str, steps: str) -> str:
    return one_pipeline(upstream_url, steps).replace(
        "policies: [jwt, proxy, rate-limit, key-auth, basic-auth]", ALL_POLICIES
    )


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
    gateway = start_gateway(config(upstreams["orders"].url, steps))
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


def test_cache_serves_repeats_within_the_ttl_and_never_across_clients(start_gateway, tmp_path):
    from harness import Upstream

    upstream = Upstream("slow-service")  # its own counter of requests served
    try:
        steps = "- cache: [{action: {ttl: 1}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
        gateway = start_gateway(config(upstream.url, steps))

        def served(path: str, **headers: str) -> tuple[int, str, str | None]:
            reply = gateway.send(path, headers=headers)
            return json.loads(reply.body)["served"], reply.headers["X-Cache"], reply.headers.get("Age")

        first = served("/items?page=1")
        assert first[1] == "MISS"
        assert [served("/items?page=1") for _ in range(4)] == [(first[0], "HIT", "0")] * 4
        assert served("/items?page=2")[0] == first[0] + 1, "another query is another entry"
        time.sleep(1.1)
        assert served("/items?page=1")[1] == "MISS", "not past the TTL"

        stored_once = served("/never?cacheControl=no-store")[0]
        assert served("/never?cacheControl=no-store")[0] == stored_once + 1
        with_cookie = served("/cookie?setCookie=a%3Db")[0]
        assert served("/cookie?setCookie=a%3Db")[0] == with_cookie + 1, "a Set-Cookie answer is not kept"
        stored = served("/max?cacheControl=max-age%3D60")
        assert stored[1] == "MISS"
        assert served("/max?cacheControl=max-age%3D60")[:2] == (stored[0], "HIT")

        # Authorized requests neither read nor fill the shared cache: the upstream answers this
        # one itself, as the very next request it serves.
        mine = gateway.send("/max?cacheControl=max-age%3D60", headers={"Authorization": "Bearer alice"})
        assert "X-Cache" not in mine.headers and json.loads(mine.body)["served"] == stored[0] + 1

        english = served("/lang?vary=Accept-Language", **{"Accept-Language": "en"})
        assert served("/lang?vary=Accept-Language", **{"Accept-Language": "en"})[1] == "HIT"
        assert served("/lang?vary=Accept-Language", **{"Accept-Language": "fr"})[0] == english[0] + 1
    finally:
        upstream.stop()


def test_configs_that_would_leak_are_refused(tmp_path):
    from mitmgateway.config.assemble import load_config
    from mitmgateway.config.errors import ConfigError
    from mitmgateway.policies import StepState

    file = tmp_path / "gateway.config.yml"
    for steps, reason in [
        (
            "- cors: [{action: {origin: true, credentials: true}}]",
            "credentials need a list of trusted origins",
        ),
        (
            "- cache: [{action: {}}]\n- key-auth: [{action: {}}]",
            "a cache step comes before an authentication step",
        ),
    ]:
        file.write_text(
            config("http://127.0.0.1:9", steps + "\n- proxy: [{action: {serviceEndpoint: backend}}]").replace(
                "{port}", "8080"
            )
        )
        try:
            load_config(file, StepState(), {})
        except ConfigError as e:
            assert reason in str(e)
        else:
            raise AssertionError(f"accepted: {steps}")


def test_cache_never_keeps_identified_or_unkeyed_requests(start_gateway, tmp_path):
    from consumers_fixture import write_consumers
    from harness import Upstream

    write_consumers(tmp_path)
    upstream = Upstream("personal")
    try:
        steps = (
            "- key-auth:\n"
            "    - {condition: {name: expression, expression: req.headers.authorization}, action: {}}\n"
            "- cache: [{action: {ttl: 60}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
        )
        gateway = start_gateway(config(upstream.url, steps))
        key = {"Authorization": "apiKey k1:topsecret"}
        first = json.loads(gateway.send("/me", headers=key).body)["served"]
        assert json.loads(gateway.send("/me", headers=key).body)["served"] == first + 1
        anonymous = gateway.send("/me")
        assert anonymous.headers["X-Cache"] == "MISS"
        poisoned = gateway.send("/me", headers={"X-Forwarded-Host": "evil.example"})
        assert "X-Cache" not in poisoned.headers
        assert gateway.send("/me").headers["X-Cache"] == "HIT"
    finally:
        upstream.stop()


def test_large_bodies_stream_unless_a_step_needs_them(tmp_path):
    from gateway_unit import gateway_for, make_flow, upstream_response

    def flows(steps: str):  # type: ignore[no-untyped-def]
        text = config("http://127.0.0.1:9", steps + "\n- proxy: [{action: {serviceEndpoint: backend}}]")
        with gateway_for(tmp_path, text.replace("{port}", "8080")) as gateway:
            large, small = make_flow(method="POST"), make_flow(method="POST")
            large.request.headers["Content-Length"] = str(5 << 20)  # as announced by the client
            small.request.headers["Content-Length"] = "10"
            for flow in (large, small):
                gateway.requestheaders(flow)
                upstream_response(flow, gateway, {"Transfer-Encoding": "chunked"})
            return large, small

    large, small = flows("- log: [{action: {message: x}}]")
    assert large.request.stream is True and large.response.stream is True
    assert not small.request.stream and small.response.stream is True  # chunked: length unknown
    large, _ = flows(
        "- request-transformer: [{action: {body: {add: {a: \"'b'\"}}}}]\n"
        "- response-transformer: [{action: {body: {remove: [x]}}}]"
    )
    assert not large.request.stream and not large.response.stream


def test_a_large_body_streams_through_intact(start_gateway, upstreams):
    gateway = start_gateway(
        config(upstreams["orders"].url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    )
    body = bytes(range(256)) * (12 << 10)  # 3 MiB
    reply = gateway.send("/upload", method="POST", body=body)
    assert reply.status == 200 and json.loads(reply.body)["bodyLength"] == len(body)
