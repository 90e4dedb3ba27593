"""Metrics, the access log, trace context and the admin port, on real running gateways."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import pytest

from conftest import one_pipeline
from consumers_fixture import write_consumers
from harness import admin_get, free_port, metric, send, wait_until
from mint_token import mint
from mitmgateway.observe.admin import AdminServer
from mitmgateway.observe.tracing import is_valid_traceparent


@pytest.fixture
def observed_walkthrough(walkthrough_config):
    admin_port = free_port()

    def render(port: int) -> str:
        return (
            walkthrough_config(port)
            + f"admin: {{port: {admin_port}}}\naccessLog: {{path: logs/access.log}}\n"
        )

    return render, admin_port


def test_metrics_count_requests_by_pipeline_policy_status_and_reason(
    start_gateway, observed_walkthrough, rsa_keys, token, upstreams
):
    render, admin_port = observed_walkthrough
    gateway = start_gateway(render)
    expired = mint(rsa_keys[0], "demo-user", expires_in=-60)
    assert gateway.send(host="customers.local").status == 401  # no token
    assert gateway.send(host="customers.local").status == 429
    time.sleep(1.05)
    bearer = {"Authorization": f"Bearer {expired}"}
    assert gateway.send(host="customers.local", headers=bearer).status == 401
    time.sleep(1.05)
    bearer = {"Authorization": f"Bearer {token}"}
    assert gateway.send(host="customers.local", headers=bearer).status == 200
    assert gateway.send(host="orders.local", headers=bearer).status == 200
    assert gateway.send(host="nowhere.local").status == 404

    status, text = wait_until(
        lambda: (r := admin_get(admin_port, "/metrics"))[1].count("mitmgateway_requests_total{") >= 5 and r,
        timeout=5,
    )
    assert status == 200
    requests = "mitmgateway_requests_total"
    assert metric(text, requests, pipeline="customers", policy="jwt", status="401") == 2
    assert metric(text, requests, pipeline="customers", policy="rate-limit", status="429") == 1
    assert metric(text, requests, pipeline="customers", policy="proxy", status="200") == 1
    assert metric(text, requests, pipeline="orders", policy="proxy", status="200") == 1
    assert metric(text, requests, pipeline="", policy="no apiEndpoint", status="404") == 1
    assert metric(text, "mitmgateway_rate_limited_total", pipeline="customers") == 1
    failures = "mitmgateway_jwt_failures_total"
    assert metric(text, failures, pipeline="customers", reason="missing") == 1
    assert metric(text, failures, pipeline="customers", reason="expired") == 1
    upstream = "mitmgateway_upstream_response_seconds_count"
    assert metric(text, upstream, service="customers") == 1
    assert metric(text, upstream, service="orders") == 1

    config = gateway.config
    config.write_text(config.read_text().replace("max: 1,", "max: 2,"))
    wait_until(lambda: "config reloaded" in gateway.log())
    config.write_text(config.read_text().replace("max: 2,", "max: lots,"))
    wait_until(lambda: "config change refused" in gateway.log())
    text = admin_get(admin_port, "/metrics")[1]
    assert metric(text, "mitmgateway_config_reloads_total", result="ok") == 1
    assert metric(text, "mitmgateway_config_reloads_total", result="failed") == 1


def test_access_log_has_one_json_line_per_request(start_gateway, observed_walkthrough, token, upstreams):
    render, _admin_port = observed_walkthrough
    gateway = start_gateway(render)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    bearer = {"Authorization": f"Bearer {token}", "traceparent": traceparent}
    # Logged as matched and forwarded (canonical), and as the client wrote it.
    ok = gateway.send("//customers/%37?x=1", host="customers.local", headers=bearer)
    assert ok.status == 200
    assert gateway.send(host="customers.local").status == 429

    log_file = gateway.config.parent / "logs" / "access.log"
    lines = wait_until(lambda: log_file.exists() and len(log_file.read_text().splitlines()) >= 2 and log_file)
    first, second = (json.loads(line) for line in lines.read_text().splitlines())
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640, "the log names clients: owner and group only"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first | {"time": None, "durationMs": None, "upstreamMs": None, "bytesSent": None} == {
        "time": None,
        "client": "127.0.0.1",
        "host": "customers.local",
        "method": "GET",
        "path": "/customers/7?x=1",
        "target": "//customers/%37?x=1",
        "status": 200,
        "apiEndpoint": "customers",
        "pipeline": "customers",
        "answeredBy": None,
        "reported": None,
        "consumer": None,
        "shadow": None,
        "upstream": f"127.0.0.1:{upstreams['customers'].port}",
        "durationMs": None,
        "upstreamMs": None,
        "bytesSent": None,
        "requestId": ok.headers["X-Request-Id"],
        "traceparent": traceparent,
        "error": None,
    }
    assert 0 <= first["upstreamMs"] <= first["durationMs"]
    assert first["bytesSent"] == len(ok.body)
    assert (second["status"], second["answeredBy"], second["upstream"]) == (429, "rate-limit", None)


def access_log_lines(path: Path, count: int) -> list[dict]:
    """The first `count` lines of the access log at `path`, once it has them."""
    found = wait_until(
        lambda: path.exists() and len(lines := path.read_text().splitlines()) >= count and lines
    )
    assert found, f"fewer than {count} lines in {path}"
    return [json.loads(line) for line in found]


def test_a_query_string_api_key_is_redacted_in_the_access_log_file(start_gateway, upstreams, tmp_path):
    write_consumers(tmp_path)
    config = one_pipeline(
        upstreams["customers"].url,
        "- key-auth: [{action: {}}]\n- proxy: [{action: {serviceEndpoint: backend}}]",
        extra="accessLog: {path: logs/access.log}\n",
    )
    gateway = start_gateway(config)
    ok = gateway.send("/items?apiKey=k1:topsecret&page=2")
    assert ok.status == 200, ok.text
    refused = gateway.send("/items?apiKey=k1:wrongsecret")
    assert refused.status == 401
    log_file = tmp_path / "logs" / "access.log"
    first, second = access_log_lines(log_file, 2)
    assert (first["path"], first["consumer"]) == ("/items?apiKey=REDACTED&page=2", "alice")
    assert (second["path"], second["status"]) == ("/items?apiKey=REDACTED", 401)
    assert "topsecret" not in log_file.read_text() and "wrongsecret" not in log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640


def test_bytes_sent_counts_a_streamed_response(start_gateway, upstreams, tmp_path):
    config = one_pipeline(
        upstreams["customers"].url,
        "- proxy: [{action: {serviceEndpoint: backend}}]",
        extra="accessLog: {path: logs/access.log}\n",
    )
    gateway = start_gateway(config)
    size = (3 << 19) + 7  # chunked and over 1 MiB: the gateway streams it, holding none of it
    reply = gateway.send(f"/download?chunked={size}")
    assert (reply.status, len(reply.body)) == (200, size)
    assert reply.headers["Transfer-Encoding"] == "chunked"
    (line,) = access_log_lines(tmp_path / "logs" / "access.log", 1)
    assert line["bytesSent"] == size


def test_traceparent_is_kept_created_or_replaced_and_reaches_the_upstream(start_gateway, upstreams):
    config = one_pipeline(upstreams["customers"].url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    gateway = start_gateway(config)

    def forwarded(headers: dict[str, str]) -> str:
        return json.loads(gateway.send(headers=headers).body)["headers"]["traceparent"]

    kept = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert forwarded({"traceparent": kept}) == kept
    echoed = json.loads(gateway.send(headers={"traceparent": "garbage", "tracestate": "v=1"}).body)
    assert "tracestate" not in {name.lower() for name in echoed["headers"]}
    created = forwarded({})
    assert is_valid_traceparent(created) and created != forwarded({})
    for malformed in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + kept[3:]):
        replaced = forwarded({"traceparent": malformed})
        assert replaced != malformed and is_valid_traceparent(replaced)


def test_health_and_ready_on_the_admin_port():
    state = {"ready": False}
    server = AdminServer(ready=lambda: state["ready"], metrics=lambda: b"# metrics\n")
    port = free_port()
    server.configure(("127.0.0.1", port))
    try:
        assert admin_get(port, "/health") == (200, "ok\n")
        assert admin_get(port, "/ready") == (503, "no valid config loaded\n")
        state["ready"] = True
        assert admin_get(port, "/ready") == (200, "ready\n")
        assert admin_get(port, "/metrics") == (200, "# metrics\n")
        assert admin_get(port, "/nope")[0] == 404
    finally:
        server.stop()


def test_a_pool_serves_the_sum_of_its_workers_metrics(start_gateway, upstreams):
    admin_port = free_port()
    config = one_pipeline(
        upstreams["customers"].url,
        "- proxy: [{action: {serviceEndpoint: backend}}]",
        extra=f"admin: {{port: {admin_port}}}\n",
    )
    gateway = start_gateway(config, runner="mitmgateway", workers=2)
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    for i in range(30):
        assert send(gateway.port, f"/{i}").status == 200
    text = wait_until(
        lambda: (
            metric(
                t := admin_get(admin_port, "/metrics")[1],
                "mitmgateway_requests_total",
                pipeline="api",
                policy="proxy",
                status="200",
            )
            == 30
            and t
        )
    )
    assert text, "the pool's /metrics did not add up the workers' requests"
    assert admin_get(admin_port, "/health")[0] == 200


def test_a_query_string_credential_is_redacted_in_the_access_log():
    from mitmproxy.test import tflow

    from mitmgateway.decision import Decision
    from mitmgateway.observe.access_log import access_record

    flow = tflow.tflow(resp=True)
    decision = Decision()
    decision.host, decision.path = "api.local", "/items?access_token=eyJsecret&page=2"
    decision.add_secret_query_param("access_token")
    assert access_record(flow, decision)["path"] == "/items?access_token=REDACTED&page=2"
