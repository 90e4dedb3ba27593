"""The Grafana dashboard (docs/grafana/mitmgateway.json) reads only metrics the gateway exports,
by the names Prometheus gives them, and every panel has a query."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mitmgateway.observe.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mitmgateway.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    metrics = GatewayMetrics()
    assert metrics.registry is not None
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_query_of_the_dashboard_reads_metrics_the_gateway_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    read = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            read |= set(re.findall(r"\bmitmgateway_[a-z_]+", target["expr"]))
    assert read <= exported, read - exported
    # What the dashboard is for: traffic, errors and latency by pipeline, the answering policy,
    # upstream health, rate limits, JWT failures, reloads.
    for wanted in (
        "mitmgateway_requests_total",
        "mitmgateway_request_duration_seconds_bucket",
        "mitmgateway_upstream_up",
        "mitmgateway_rate_limited_total",
        "mitmgateway_jwt_failures_total",
        "mitmgateway_config_reloads_total",
    ):
        assert wanted in read, wanted
