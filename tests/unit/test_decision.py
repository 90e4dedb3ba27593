"""The decision record: typed, kept as plain data in the flow, saved and read back with it,
comparable field by field."""

from __future__ import annotations

import io

from mitmproxy import io as mitmproxy_io

from gateway_unit import gateway_for, make_flow
from mitmgateway.decision import Decision

CONFIG = """\
http: {port: 8080}
apiEndpoints: {api: {host: '*'}}
serviceEndpoints: {backend: {url: 'http://127.0.0.1:9001'}}
policies: [rate-limit, jwt, proxy, headers]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - headers: [{condition: {name: pathExact, path: /never}, action: {}}]
      - rate-limit: [{action: {max: 100}}]
      - jwt: [{action: {secretOrPublicKey: not-this-one, checkCredentialExistence: false}}]
      - proxy: [{action: {serviceEndpoint: backend}}]
"""


def test_each_step_the_pipeline_reached_is_recorded_with_its_outcome(tmp_path):
    with gateway_for(tmp_path, CONFIG) as gateway:
        flow = make_flow(path="/orders")
        gateway.requestheaders(flow)
        decision = Decision.recorded(flow)
        assert decision is not None
        assert decision.steps == [["headers", "skipped"], ["rate-limit", "passed"], ["jwt", "answered"]]
        assert (decision.api_endpoint, decision.pipeline, decision.answered_by) == ("api", "main", "jwt")
        assert decision.jwt_failure == "missing"
        assert (decision.host, decision.path, decision.target) == ("api.local", "/orders", "/orders")
        # The typed record is the flow's own data, which mitmweb and saved flows carry.
        assert flow.metadata["gateway"]["answeredBy"] == "jwt"
        assert flow.metadata["gateway"]["origin"] == {
            "host": "api.local",
            "path": "/orders",
            "target": "/orders",
        }


def test_a_saved_flow_reads_back_with_the_same_decision(tmp_path):
    with gateway_for(tmp_path, CONFIG) as gateway:
        flow = make_flow(path="/a//b")
        gateway.requestheaders(flow)
        buffer = io.BytesIO()
        mitmproxy_io.FlowWriter(buffer).add(flow)
        buffer.seek(0)
        (loaded,) = list(mitmproxy_io.FlowReader(buffer).stream())
    assert Decision.recorded(loaded) == Decision.recorded(flow)
    assert Decision.recorded(loaded).target == "/a//b"


def test_two_decisions_say_how_they_differ():
    before = Decision({"pipeline": "main", "answeredBy": None, "upstream": "127.0.0.1:9001"})
    after = Decision({"pipeline": "main", "answeredBy": "rate-limit"})
    assert before != after
    assert before.differences(after) == {
        "answeredBy": (None, "rate-limit"),
        "upstream": ("127.0.0.1:9001", None),
    }
    assert before.differences(Decision(dict(before.data))) == {}


def test_unset_fields_read_as_their_defaults_and_set_ones_land_in_the_data():
    decision = Decision()
    assert (decision.answered_by, decision.served, decision.upstream_failures) == (None, False, ())
    decision.add_upstream_failure("http://a:1", "connect failed")
    decision.served = True
    assert decision.data == {"upstreamFailures": [["http://a:1", "connect failed"]], "served": True}
    assert Decision.recorded(make_flow()) is None
