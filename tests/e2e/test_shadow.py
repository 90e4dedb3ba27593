"""A shadow config (gateway_shadow, mitmgateway run --shadow): every request decided again under a
candidate, and exactly the requests it decides otherwise reported, in the access log and /metrics;
the candidate reloaded, and a broken one never affecting serving."""

from __future__ import annotations

import json

import pytest

from harness import admin_get, bearer, free_port, metric, wait_until
from processes import walkthrough_config

KEY_AUTH_ON_ORDERS = (
    "  orders:\n    apiEndpoints: [orders]\n    policies:\n",
    "  orders:\n    apiEndpoints: [orders]\n    policies:\n      - key-auth: [{action: {}}]\n",
)
CUSTOMERS_UNDER_V2 = ("    host: customers.local\n", "    host: customers.local\n    paths: '/v2/*'\n")


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_a_shadow_config_reports_exactly_the_requests_it_decides_otherwise(
    start_gateway, upstreams, rsa_keys, token, tmp_path, runner
):
    admin_port = free_port()
    urls = upstreams["customers"].url, upstreams["orders"].url
    extra = f"admin: {{port: {admin_port}}}\naccessLog: {{path: logs/access.log}}\n"
    serving = walkthrough_config(8080, *urls, rsa_keys[1], max_requests=100) + extra
    candidate = tmp_path / "candidate.yml"
    text = serving.replace(
        "policies: [jwt, proxy, rate-limit]", "policies: [jwt, key-auth, proxy, rate-limit]"
    )
    for old, new in (KEY_AUTH_ON_ORDERS, CUSTOMERS_UNDER_V2):
        text = text.replace(old, new)
    candidate.write_text(text)
    gateway = start_gateway(
        lambda port: serving.replace("port: 8080", f"port: {port}"),
        runner=runner,
        options=(f"gateway_shadow={candidate}",),
    )
    sent = [
        ("/c/1", "customers.local", bearer(token), 200),
        ("/v2/c", "customers.local", bearer(token), 200),
        ("/o/1", "orders.local", bearer(token), 200),
        ("/o/2", "orders.local", {}, 401),
        ("/x", "unknown.local", {}, 404),
    ]
    for path, host, headers, status in sent:
        assert gateway.send(path, host=host, headers=headers).status == status, "serving is unchanged"
    log = tmp_path / "logs" / "access.log"
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == len(sent))
    shadow = {entry["path"]: entry["shadow"] for entry in map(json.loads, log.read_text().splitlines())}
    assert {path: (s["status"], s["policy"]) for path, s in shadow.items()} == {
        "/c/1": (404, "no apiEndpoint"),
        "/v2/c": (200, None),
        "/o/1": (401, "key-auth"),
        "/o/2": (401, "key-auth"),
        "/x": (404, "no apiEndpoint"),
    }
    text = admin_get(admin_port, "/metrics")[1]
    differences = "mitmgateway_shadow_differences_total"
    counted = {
        (serving, candidate, serving_status, candidate_status): metric(
            text,
            differences,
            serving_pipeline=serving,
            candidate_pipeline=candidate,
            serving_status=serving_status,
            candidate_status=candidate_status,
        )
        for serving, candidate, serving_status, candidate_status in (
            ("customers", "", "200", "404"),
            ("orders", "orders", "200", "401"),
            ("orders", "orders", "401", "401"),
        )
    }
    assert set(counted.values()) == {1.0}, counted
    assert text.count(differences + "{") == 3, "and nothing else differs"

    # A broken candidate: refused, the last good one still decides, serving untouched.
    candidate.write_text("pipelines: [")
    assert wait_until(
        lambda: (
            "shadow config change refused, the last good one still decides" in gateway.log_path.read_text()
        )
    )
    assert gateway.send("/o/3", host="orders.local", headers=bearer(token)).status == 200
    # The candidate made the same as serving: no more differences.
    candidate.write_text(serving)
    assert wait_until(lambda: "shadow config reloaded" in gateway.log_path.read_text())
    assert gateway.send("/c/2", host="customers.local", headers=bearer(token)).status == 200
    assert wait_until(lambda: len(log.read_text().splitlines()) == len(sent) + 2)
    last = [json.loads(line) for line in log.read_text().splitlines()][-2:]
    assert [(e["path"], e["shadow"]["policy"], e["shadow"]["status"]) for e in last] == [
        ("/o/3", "key-auth", 401),
        ("/c/2", None, 200),
    ]


def test_a_broken_shadow_config_at_startup_never_stops_serving(
    start_gateway, upstreams, tmp_path, rsa_keys, token
):
    candidate = tmp_path / "candidate.yml"
    candidate.write_text("pipelines: [")
    urls = upstreams["customers"].url, upstreams["orders"].url
    gateway = start_gateway(
        lambda port: walkthrough_config(port, *urls, rsa_keys[1], max_requests=100),
        options=(f"gateway_shadow={candidate}",),
    )
    assert gateway.send("/o", host="orders.local", headers=bearer(token)).status == 200
    assert "invalid shadow config, no shadow decides until it is fixed" in gateway.log_path.read_text()
