"""The rate-limit policy, run by the Gateway addon under mitmproxy's test helpers."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from gateway_unit import gateway_for, make_flow, request_status, upstream_response

CONFIG = """\
http: {{port: 8080}}
{extra}
apiEndpoints: {{api: {{host: api.local}}, other: {{host: other.local}}}}
serviceEndpoints: {{backend: {{url: 'http://127.0.0.1:9001'}}}}
policies: [proxy, rate-limit]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - rate-limit: [{{action: {{{action}}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
  other:
    apiEndpoints: [other]
    policies:
      - rate-limit: [{{action: {{{action}}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.fixture
def gateway_with(tmp_path):
    return lambda action, extra="": gateway_for(tmp_path, CONFIG.format(action=action, extra=extra))


def statuses(gateway, flows) -> list[int]:
    return [request_status(gateway, flow) for flow in flows]


def test_headers_on_let_through_responses_and_429_after_max(gateway_with):
    with gateway_with("max: 2, windowMs: 60000") as gateway:
        first, second, third = make_flow(), make_flow(), make_flow()
        assert statuses(gateway, [first, second, third]) == [200, 200, 429]
        upstream_response(first, gateway)
        assert first.response.headers["X-RateLimit-Limit"] == "2"
        assert first.response.headers["X-RateLimit-Remaining"] == "1"
        reset = int(first.response.headers["X-RateLimit-Reset"])
        assert time.time() + 58 <= reset <= time.time() + 61
        assert "Retry-After" not in first.response.headers
        assert first.response.headers["RateLimit-Policy"] == '"default";q=2;w=60'
        assert re.fullmatch(r'"default";r=1;t=(59|60)', first.response.headers["RateLimit"])
        rejected = third.response
        assert rejected.text == "Too many requests, please try again later."
        assert rejected.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert rejected.headers["X-RateLimit-Remaining"] == "0"
        assert 59 <= int(rejected.headers["Retry-After"]) <= 60
        assert third.metadata["gateway"]["answeredBy"] == "rate-limit"
        assert third.marked


def test_window_ends(gateway_with):
    with gateway_with("max: 1, windowMs: 200") as gateway:
        assert statuses(gateway, [make_flow(), make_flow()]) == [200, 429]
        time.sleep(0.25)
        assert statuses(gateway, [make_flow()]) == [200]


def test_json_answer_custom_message_and_status(gateway_with):
    with gateway_with("max: 1, message: Slow down, statusCode: 503") as gateway:
        flows = [make_flow(), make_flow(headers={"Accept": "application/json"})]
        assert statuses(gateway, flows) == [200, 503]
        assert json.loads(flows[1].response.content) == {"message": "Slow down"}


def test_clients_and_pipelines_count_separately(gateway_with):
    with gateway_with("max: 1") as gateway:
        assert statuses(gateway, [make_flow(peer="192.0.2.1"), make_flow(peer="192.0.2.2")]) == [200, 200]
        assert statuses(gateway, [make_flow("other.local", peer="192.0.2.1")]) == [200]
        assert statuses(gateway, [make_flow(peer="192.0.2.1")]) == [429]


def test_spoofed_x_forwarded_for_is_ignored(gateway_with):
    with gateway_with("max: 1") as gateway:
        flows = [make_flow(headers={"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(2)]
        assert statuses(gateway, flows) == [200, 429]


def test_trusted_proxy_x_forwarded_for_names_the_client(gateway_with):
    with gateway_with("max: 1", extra="trustedProxies: [10.0.0.0/8]") as gateway:
        via_proxy = [
            make_flow(peer="10.1.1.1", headers={"X-Forwarded-For": "198.51.100.7"}),
            make_flow(peer="10.1.1.1", headers={"X-Forwarded-For": "198.51.100.8, 10.2.2.2"}),
            make_flow(peer="10.1.1.1", headers={"X-Forwarded-For": "198.51.100.7"}),
        ]
        assert statuses(gateway, via_proxy) == [200, 200, 429]


def test_rate_limit_by_header_falls_back_to_ip(gateway_with, caplog):
    caplog.set_level(logging.INFO, logger="mitmgateway")
    with gateway_with("max: 1, rateLimitBy: 'key-${req.headers.x-api-key}'") as gateway:
        flows = [
            make_flow(peer="192.0.2.1", headers={"X-Api-Key": "a"}),
            make_flow(peer="192.0.2.2", headers={"X-Api-Key": "a"}),
            make_flow(peer="192.0.2.3", headers={"X-Api-Key": "b"}),
            make_flow(peer="192.0.2.3"),
            # Another address without a key has its own count: had the missing header been
            # rendered empty, every keyless client would share "key-" and this would be a 429.
            make_flow(peer="192.0.2.4"),
            make_flow(peer="192.0.2.3"),
            make_flow(peer="192.0.2.4"),
        ]
        assert statuses(gateway, flows) == [200, 429, 200, 200, 200, 429, 429]
    fallbacks = [r.getMessage() for r in caplog.records if "has no value" in r.getMessage()]
    assert fallbacks == [
        "rateLimitBy key-${req.headers.x-api-key} has no value for a request; "
        "counting such requests by client IP"
    ], "one line, the first time only"


def test_counters_survive_a_reload_of_an_unchanged_step(gateway_with, tmp_path):
    with gateway_with("max: 1") as gateway:
        assert statuses(gateway, [make_flow()]) == [200]
        path = tmp_path / "gateway.config.yml"
        path.write_text(path.read_text() + "# edited\n")
        gateway.reload()
        assert statuses(gateway, [make_flow()]) == [429]
