"""The Gateway addon's own duties: refusing bad option changes, failing closed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from mitmproxy import ctx, exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from gateway_unit import make_flow, running_gateway
from mitmgateway.addon import Gateway
from mitmgateway.policies import POLICIES, Policy, register_policy

CONFIG = """\
http: {port: 8080}
apiEndpoints: {api: {host: '*'}}
serviceEndpoints: {backend: {url: 'http://127.0.0.1:9001'}}
policies: [POLICIES]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
STEPS
"""


def write(tmp_path, policies: str, steps: str, name: str = "gateway.config.yml"):
    path = tmp_path / name
    path.write_text(CONFIG.replace("POLICIES", policies).replace("STEPS", steps))
    return path


def test_sets_reverse_mode_on_the_configured_listener(tmp_path):
    path = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    with running_gateway(path):
        assert ctx.options.mode == ["reverse:http://unrouted.invalid@8080"]
        assert ctx.options.connection_strategy == "lazy"
        assert ctx.options.keep_host_header is True


def test_invalid_config_set_at_run_time_is_refused_and_the_old_one_kept(tmp_path):
    good = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    bad = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: nope}}]", name="bad.yml")
    with running_gateway(good) as gateway:
        with pytest.raises(exceptions.OptionsError, match=r"bad\.yml: pipelines\.main\.policies\[0\]"):
            ctx.options.update(gateway_config=str(bad))
        assert ctx.options.gateway_config == str(good)
        assert gateway.config.file == good


def test_without_a_valid_config_every_request_is_refused(tmp_path, caplog):
    bad = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: nope}}]")
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:
        tctx.configure(gateway, gateway_config=str(bad))
        assert any(r.levelname == "ERROR" and "invalid gateway config" in r.message for r in caplog.records)
        flow = make_flow()
        gateway.requestheaders(flow)
        assert flow.response.status_code == 503
        assert flow.metadata["gateway"]["answeredBy"] == "no config"
        assert flow.comment == "gateway: no apiEndpoint matched; answered 503 by no config"


@dataclass(frozen=True)
class _NoAction:
    pass


class _BrokenPolicy(Policy):
    name = "broken"
    Action = _NoAction

    def __init__(self, action, build) -> None:
        pass

    def handle(self, ctx) -> None:
        ctx.routed = True
        raise RuntimeError("a bug in a policy")


@pytest.fixture
def broken_policy():
    register_policy(_BrokenPolicy)
    yield
    POLICIES.pop("broken")


def test_a_failing_policy_fails_closed(tmp_path, broken_policy):
    path = write(tmp_path, "broken", "      - broken:")
    with running_gateway(path) as gateway:
        flow = make_flow()
        gateway.requestheaders(flow)
        assert flow.response.status_code == 500
        assert flow.metadata["gateway"]["answeredBy"] == "gateway error"


def test_a_pipeline_without_proxy_ends_in_404(tmp_path):
    path = write(tmp_path, "rate-limit", "      - rate-limit: [{action: {max: 100}}]")
    with running_gateway(path) as gateway:
        flow = make_flow()
        gateway.requestheaders(flow)
        assert (flow.response.status_code, flow.response.text) == (404, "Not Found")
        assert flow.metadata["gateway"]["answeredBy"] == "no proxy step"


def test_flows_already_answered_are_left_alone(tmp_path):
    path = write(tmp_path, "proxy", "      - proxy: [{action: {serviceEndpoint: backend}}]")
    with running_gateway(path) as gateway:
        flow = make_flow()
        flow.response = http.Response.make(204)
        gateway.requestheaders(flow)
        assert flow.response.status_code == 204
        assert "gateway" not in flow.metadata
