"""oauth2-introspect: its action refused with the key path when wrong, and never guessed offline
(a what-if replay or a cases file cannot ask the authorization server)."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import http

from gateway_unit import make_flow
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.hooks.recorder import CLIENT_REQUEST_KEY, STRIPPED_KEY, UPSTREAM_RESPONSE_KEY
from mitmgateway.policies import StepState
from mitmgateway.whatif.offline import OfflineGateway
from mitmgateway.whatif.recorded import Recorded

CONFIG = """\
http: {{port: 8080}}
apiEndpoints: {{api: {{host: '*'}}}}
serviceEndpoints: {{backend: {{url: 'http://127.0.0.1:9001'}}}}
policies: [oauth2-introspect, proxy]
pipelines:
  api:
    apiEndpoints: [api]
    policies:
      - oauth2-introspect: [{{action: {action}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.mark.parametrize(
    ("action", "error"),
    [
        ("{}", "action.endpoint: is required"),
        ("{endpoint: auth.local/introspect}", "action.endpoint: must be an https:// (or http://) URL"),
        ("{endpoint: 'http://a/i', ttl: -1}", "action.ttl: must be 0 or more"),
        ("{endpoint: 'http://a/i', timeout: 0}", "action.timeout: must be greater than 0"),
        ("{endpoint: 'http://a/i', scopes: [a]}", "action.scopes: unknown key"),
    ],
)
def test_a_wrong_action_is_refused_with_its_key_path(tmp_path, action, error):
    path = tmp_path / "gateway.config.yml"
    path.write_text(CONFIG.format(action=action))
    with pytest.raises(ConfigError) as refused:
        load_config(path, StepState(), {})
    assert f"pipelines.api.policies[0].oauth2-introspect[0].{error}" in str(refused.value)


def test_offline_a_token_it_would_introspect_is_indeterminate_and_no_token_is_refused(tmp_path):
    path = tmp_path / "gateway.config.yml"
    path.write_text(CONFIG.format(action="{endpoint: 'http://127.0.0.1:9/introspect'}"))
    gateway = OfflineGateway(path, {})

    def decided(headers: dict[str, str]):
        flow = make_flow(headers=headers)
        flow.metadata[CLIENT_REQUEST_KEY] = flow.request.get_state()
        flow.metadata["gateway"] = {}
        return asyncio.run(gateway.decide(Recorded.of_flow(flow)))[1]

    outcome = decided({"Authorization": "Bearer t"})
    assert (
        outcome.indeterminate
        == "oauth2-introspect's endpoint http://127.0.0.1:9/introspect is not called offline"
    )
    refused = decided({})
    assert (refused.indeterminate, refused.status, refused.policy) == (None, 401, "oauth2-introspect")


@pytest.mark.parametrize(
    ("scope", "expected"), [("orders:read profile", "proxied 200"), ("profile", "403 by oauth2-introspect")]
)
def test_a_recording_without_credentials_replays_the_recorded_answer_judged_by_its_scope(
    tmp_path, scope, expected
):
    path = tmp_path / "gateway.config.yml"
    path.write_text(
        CONFIG.format(action="{endpoint: 'http://127.0.0.1:9/introspect'}").replace(
            "api: {host: '*'}", "api: {host: '*', scopes: ['orders:read']}"
        )
    )
    flow = make_flow()
    flow.metadata[CLIENT_REQUEST_KEY] = flow.request.get_state()
    flow.metadata[STRIPPED_KEY] = ["authorization"]
    flow.metadata["gateway"] = {
        "steps": [["oauth2-introspect", "passed"], ["proxy", "passed"]],
        "user": {"active": True, "sub": "alice", "scope": scope},
        "consumer": "alice",
    }
    flow.response = http.Response.make(200)
    flow.metadata[UPSTREAM_RESPONSE_KEY] = flow.response.get_state()
    outcome = asyncio.run(OfflineGateway(path, {}).decide(Recorded.of_flow(flow)))[1]
    assert outcome.label == expected
    assert outcome.assumed, "the recorded identity, said so"
