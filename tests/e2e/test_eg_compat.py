"""An Express Gateway user's files load as Express Gateway loads them (#12): YAML anchors, aliases
and merge keys, scalars coerced as its validator (ajv, coerceTypes) does, zeros that mean "off",
and policy names in `policies:` that no pipeline uses."""

from __future__ import annotations

import json

import pytest

from gateway_unit import gateway_for, make_flow
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import StepState

# The walkthrough as Express Gateway's docs suggest shortening it: one anchor per action, merged
# and overridden in the second pipeline; numbers and booleans quoted; the generated policies list.
EG_CONFIG = """\
http: {{port: {port}, hostname: 127.0.0.1}}
apiEndpoints:
  customers: {{host: customers.local, paths: '/*'}}
  orders: {{host: orders.local}}
serviceEndpoints:
  customers: {{url: '{customers}'}}
  orders: {{url: '{orders}'}}
policies: [basic-auth, cors, expression, key-auth, log, oauth2, proxy, rate-limit, jwt]
pipelines:
  customers:
    apiEndpoints: [customers]
    policies:
      - rate-limit:
          - action: &limit {{max: "1", windowMs: "60000", delayAfter: 0, delayMs: 0}}
      - proxy:
          - action: &proxy {{serviceEndpoint: customers, changeOrigin: "true"}}
  orders:
    apiEndpoints: [orders]
    policies:
      - rate-limit: [{{action: {{<<: *limit, max: "2"}}}}]
      - proxy: [{{action: {{<<: *proxy, serviceEndpoint: orders}}}}]
"""


def test_an_express_gateway_config_with_anchors_quoted_scalars_and_oauth2_loads_and_serves(
    start_gateway, upstreams
):
    gateway = start_gateway(
        lambda port: EG_CONFIG.format(
            port=port, customers=upstreams["customers"].url, orders=upstreams["orders"].url
        )
    )
    first = gateway.send("/c", host="customers.local")
    assert first.status == 200
    assert json.loads(first.body)["headers"]["Host"] == f"127.0.0.1:{upstreams['customers'].port}"
    assert first.headers["X-RateLimit-Limit"] == "1"
    assert gateway.send("/c", host="customers.local").status == 429
    # The merged action, with its own max and serviceEndpoint.
    assert [gateway.send("/o", host="orders.local").status for _ in range(3)] == [200, 200, 429]
    assert "policies lists oauth2, which this gateway does not have; no pipeline may use it" in gateway.log()


def test_duplicate_keys_are_still_refused_beside_merge_keys(tmp_path):
    config = tmp_path / "gateway.config.yml"
    text = EG_CONFIG.format(port=8080, customers="http://127.0.0.1:1", orders="http://127.0.0.1:2")
    config.write_text(text.replace('max: "2"}', 'max: "2", max: "3"}'))
    with pytest.raises(ConfigError) as refused:
        load_config(config, StepState())
    assert "duplicate key 'max'" in str(refused.value)


def test_a_pipeline_using_a_listed_policy_the_gateway_lacks_is_an_error(tmp_path):
    config = tmp_path / "gateway.config.yml"
    text = EG_CONFIG.format(port=8080, customers="http://127.0.0.1:1", orders="http://127.0.0.1:2")
    config.write_text(
        text.replace("      - proxy: [{action: {<<: *proxy", "      - oauth2: [{action: {<<: *proxy")
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config, StepState())
    # Express Gateway's authorization server is not here: the error says what to use instead.
    assert "pipelines.orders.policies[1].oauth2: Express Gateway's oauth2 policy" in str(refused.value)
    assert "jwksUri" in str(refused.value) and "oauth2-introspect" in str(refused.value)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ('max: "3"', 3),
        ("max: '3.0'", 3),
        ("max: true", 1),  # ajv's coercion of a boolean to a number
    ],
)
def test_numbers_are_coerced_as_express_gateways_validator_does(tmp_path, raw, expected):
    config = tmp_path / "gateway.config.yml"
    text = EG_CONFIG.format(port=8080, customers="http://127.0.0.1:1", orders="http://127.0.0.1:2")
    config.write_text(text.replace('max: "1"', raw))
    built = load_config(config, StepState())
    assert built.pipelines["customers"].steps[0].policy.action.max == expected


UNIT_CONFIG = """\
http: {{port: 8080}}
apiEndpoints: {{api: {{host: api.local}}}}
serviceEndpoints: {{backend: {{url: 'http://127.0.0.1:9001'}}}}
policies: [rate-limit, proxy]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - rate-limit: [{{action: {{{action}}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend, changeOrigin: 'false'}}}}]
"""


def test_max_zero_is_no_limit_and_delay_zero_no_delay(tmp_path):
    # Express Gateway's meaning of 0 for max, delayAfter and delayMs: off.
    for action in ("max: 0, delayAfter: 1, delayMs: 0", "max: 5, delayAfter: 0, delayMs: 1000"):
        with gateway_for(tmp_path, UNIT_CONFIG.format(action=action)) as gateway:
            for _ in range(8):
                flow = make_flow()
                # A delayed request would make the hook return something to wait for.
                assert gateway.requestheaders(flow) is None
            assert (flow.response is None) == action.startswith("max: 0"), action
