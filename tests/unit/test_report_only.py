"""A step in mode: report, under mitmproxy's test helpers: its answer is recorded, not sent."""

from __future__ import annotations

import pytest

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow, request_status
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
        assert decision.reports == [["jwt", 401]]
        assert decision.steps == [["jwt", "reported"], ["proxy", "passed"]]
        assert decision.jwt_failure == "missing"
        assert flow.comment.endswith("; report: would answer 401 by jwt")
        assert flow.marked == ":eyes:"


def test_a_mode_other_than_enforce_or_report_is_refused_with_its_key_path(tmp_path):
    path = tmp_path / "gateway.config.yml"
    config = one_pipeline("http://127.0.0.1:9", STEPS.replace("mode: report", "mode: dry-run"))
    path.write_text(config.replace("{port}", "8080"))
    with pytest.raises(ConfigError) as info:
        load_config(path, StepState(), {})
    assert "pipelines.api.policies[0].jwt[0].mode: must be one of 'enforce', 'report'" in str(info.value)
