"""A recording without credentials leaves out every header and query parameter an auth step read
one from, as well as the usual credential headers, from the client's request and the forwarded one."""

from __future__ import annotations

from mitmproxy import http

from conftest import one_pipeline
from consumers_fixture import write_consumers
from gateway_unit import gateway_for, make_flow, request_status
from mitmgateway.decision import Decision
from mitmgateway.hooks.recorder import STRIPPED_KEY, strip_credentials

STEPS = """\
- key-auth: [{action: {apiKeyHeader: X-Api-Key, disableHeadersScheme: true}}]
- proxy: [{action: {serviceEndpoint: backend}}]"""


def test_the_header_a_step_read_a_credential_from_is_left_out(tmp_path):
    write_consumers(tmp_path)
    with gateway_for(
        tmp_path, one_pipeline("http://127.0.0.1:9", STEPS).replace("{port}", "8080")
    ) as gateway:
        flow = make_flow(
            path="/a?page=2", headers={"X-Api-Key": "k1:topsecret", "Cookie": "s=1", "X-Tier": "gold"}
        )
        client_state = flow.request.get_state()
        assert request_status(gateway, flow) == 200
    assert Decision.recorded(flow).secret_headers == ["X-Api-Key"]
    strip_credentials(flow, client_state)
    client = http.Request.from_state(client_state)
    for request in (client, flow.request):
        assert "X-Api-Key" not in request.headers and "Cookie" not in request.headers
        assert request.headers["X-Tier"] == "gold"
        assert request.query["page"] == "2"
    assert flow.metadata[STRIPPED_KEY] == ["cookie", "x-api-key"]


def test_a_query_string_credential_is_left_out_too(tmp_path):
    write_consumers(tmp_path)
    steps = "- key-auth: [{action: {}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
    with gateway_for(
        tmp_path, one_pipeline("http://127.0.0.1:9", steps).replace("{port}", "8080")
    ) as gateway:
        flow = make_flow(path="/a?apiKey=k1:topsecret&page=2")
        client_state = flow.request.get_state()
        assert request_status(gateway, flow) == 200
    strip_credentials(flow, client_state)
    for request in (http.Request.from_state(client_state), flow.request):
        assert "apiKey" not in request.query and request.query["page"] == "2"
