"""A step in mode: report, under mitmproxy's test helpers: its answer is recorded, not sent."""

from __future__ import annotations

import pytest

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow, request_status, upstream_response
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.decision import Decision
from mitmgateway.policies import StepState

STEPS = """\
- jwt: [{mode: report, action: {secretOrPublicKey: not-the-key, checkCredentialExistence: false}}]
- proxy: [{action: {serviceEndpoint: backend}}]"""


def test_a_report_only_jwt_step_lets_the_request_through_and_says_what_it_would_have_done(tmp_path):
    with gateway_for(
        tmp_path, one_pipeline("http://127.0.0.1:9", STEPS).replace("{port}", "8080")
    ) as gateway:
        flow = make_flow(path="/orders")
        assert request_status(gateway, flow) == 200
        decision = Decision.recorded(flow)
        assert decision.answered_by is None and decision.upstream == "127.0.0.1:9"
        assert decision.reports == [["jwt", 401, "token missing"]]
        assert decision.steps == [["jwt", "reported"], ["proxy", "passed"]]
        # What the step found is in its report, not left behind for what comes after.
        assert decision.jwt_failure is None
        assert flow.comment.endswith("; report: would answer 401 by jwt (token missing)")
        assert flow.marked == ":eyes:"


def test_a_report_only_rate_limit_counts_without_telling_or_slowing_clients(tmp_path):
    steps = """\
- rate-limit: [{mode: report, action: {max: 1, windowMs: 60000, delayAfter: 1, delayMs: 5000}}]
- proxy: [{action: {serviceEndpoint: backend}}]"""
    with gateway_for(
        tmp_path, one_pipeline("http://127.0.0.1:9", steps).replace("{port}", "8080")
    ) as gateway:
        flows = [make_flow(path=f"/{i}") for i in range(3)]
        assert [request_status(gateway, flow) for flow in flows] == [200, 200, 200]
        assert [Decision.recorded(f).reports for f in flows] == [
            (),
            [["rate-limit", 429, None]],
            [["rate-limit", 429, None]],
        ]
        upstream_response(flows[0], gateway)
        assert "X-RateLimit-Limit" not in flows[0].response.headers


def test_a_mode_other_than_enforce_or_report_is_refused_with_its_key_path(tmp_path):
    path = tmp_path / "gateway.config.yml"
    config = one_pipeline("http://127.0.0.1:9", STEPS.replace("mode: report", "mode: dry-run"))
    path.write_text(config.replace("{port}", "8080"))
    with pytest.raises(ConfigError) as info:
        load_config(path, StepState(), {})
    assert "pipelines.api.policies[0].jwt[0].mode: must be one of 'enforce', 'report'" in str(info.value)
