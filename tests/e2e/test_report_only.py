"""Report-only steps (mode: report): a step's answer recorded instead of sent, counted in
/metrics, the access log and mitmweb's comment, then enforced after a reload with its counters
kept; under both runners and a pool of two workers (metrics summed)."""

from __future__ import annotations

import json

import pytest

from conftest import one_pipeline
from harness import admin_get, free_port, metric, send, wait_until

STEPS = """\
- rate-limit: [{mode: report, action: {max: 3, windowMs: 60000}}]
- proxy: [{action: {serviceEndpoint: backend}}]"""


def reported(admin_port: int) -> float:
    text = admin_get(admin_port, "/metrics")[1]
    return metric(
        text, "mitmgateway_policy_reported_total", pipeline="api", policy="rate-limit", status="429"
    )


@pytest.mark.parametrize(("runner", "workers"), [("mitmdump", 1), ("mitmgateway", 1), ("mitmgateway", 2)])
def test_a_report_only_limit_lets_all_through_counts_its_429s_and_enforces_after_a_reload(
    start_gateway, upstreams, redis_server, tmp_path, runner, workers
):
    admin_port = free_port()
    # A shared store: the workers of a pool count one window, so the count is exact.
    extra = (
        f"admin: {{port: {admin_port}}}\naccessLog: {{path: logs/access.log}}\n"
        f"rateLimitStore: {{type: redis, url: '{redis_server.url}', namespace: report-{runner}-{workers}}}\n"
    )
    gateway = start_gateway(
        one_pipeline(upstreams["customers"].url, STEPS, extra=extra), runner=runner, workers=workers
    )
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    assert [send(gateway.port, f"/{i}").status for i in range(10)] == [200] * 10
    assert wait_until(lambda: reported(admin_port) == 7, timeout=10), admin_get(admin_port, "/metrics")[1]
    text = admin_get(admin_port, "/metrics")[1]
    assert metric(text, "mitmgateway_requests_total", pipeline="api", policy="proxy", status="200") == 10
    if workers == 1:
        log = [json.loads(line) for line in (tmp_path / "logs" / "access.log").read_text().splitlines()]
        assert [entry["reported"] for entry in log] == [None] * 3 + [
            [{"policy": "rate-limit", "status": 429, "reason": None}]
        ] * 7
        assert {entry["status"] for entry in log} == {200}

    # Enforced from the next request on, with the window's count kept (ten requests so far).
    gateway.config.write_text(gateway.config.read_text().replace("mode: report, ", ""))
    after: list[int] = []

    def enforced() -> bool:
        after.append(send(gateway.port, "/after").status)
        return after[-1] == 429

    assert wait_until(enforced, timeout=10)
    # Those let through until the reload took effect were reported; the refused one was not.
    assert set(after[:-1]) <= {200}
    assert wait_until(lambda: reported(admin_port) == 7 + len(after) - 1, timeout=10)
