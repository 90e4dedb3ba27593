"""Recording traffic (gateway_record): mitmproxy's own flow files, each flow with its decision,
the request as the client sent it and the upstream's answer, under both runners."""

from __future__ import annotations

import json
import stat

import pytest
from mitmproxy import http, io

from harness import bearer
from mitmgateway.decision import Decision
from mitmgateway.hooks.recorder import CLIENT_REQUEST_KEY, STRIPPED_KEY, UPSTREAM_RESPONSE_KEY
from processes import walkthrough_config


def recorded(path) -> list[http.HTTPFlow]:  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_each_flow_is_recorded_with_the_request_the_client_sent(
    start_gateway, walkthrough_config, token, tmp_path, runner
):
    recording = tmp_path / "traffic.mitm"
    gateway = start_gateway(walkthrough_config, runner=runner, options=(f"gateway_record={recording}",))
    assert gateway.send("/a", host="customers.local").status == 401
    assert gateway.send("/a", host="customers.local").status == 429
    proxied = gateway.send("/items//7?x=1", host="orders.local", headers=bearer(token, **{"X-Tier": "gold"}))
    assert proxied.status == 200
    assert gateway.stop() == 0

    assert stat.S_IMODE(recording.stat().st_mode) == 0o600, "a recording holds credentials"
    flows = recorded(recording)
    decisions = [Decision.recorded(f) for f in flows]
    assert [(d.answered_by, d.pipeline) for d in decisions] == [
        ("jwt", "customers"),
        ("rate-limit", "customers"),
        (None, "orders"),
    ]
    forwarded = flows[2]
    # The flow holds the request as forwarded (changeOrigin's Host, the canonical path)...
    assert forwarded.request.host_header != "orders.local"
    assert forwarded.request.path == "/items/7?x=1"
    # ...and the client's own request, as sent.
    client = http.Request.from_state(forwarded.metadata[CLIENT_REQUEST_KEY])
    assert (client.host_header, client.path) == ("orders.local", "/items//7?x=1")
    assert client.headers["Authorization"] == f"Bearer {token}"
    assert "X-Forwarded-For" not in client.headers and "X-Request-Id" not in client.headers
    # The upstream's answer, before the gateway's response side touched it.
    upstream = http.Response.from_state(forwarded.metadata[UPSTREAM_RESPONSE_KEY])
    assert json.loads(upstream.content)["service"] == "orders"
    assert "X-RateLimit-Limit" not in upstream.headers
    assert "X-RateLimit-Limit" in forwarded.response.headers
    # The gateway's own answers had no upstream.
    assert UPSTREAM_RESPONSE_KEY not in flows[0].metadata


def test_credentials_can_be_left_out_and_the_file_rotates(
    start_gateway, upstreams, rsa_keys, token, tmp_path
):
    recording = tmp_path / "traffic.mitm"
    urls = upstreams["customers"].url, upstreams["orders"].url
    gateway = start_gateway(
        lambda port: walkthrough_config(port, *urls, rsa_keys[1], max_requests=100),
        options=(
            f"gateway_record={recording}",
            "gateway_record_credentials=false",
            "gateway_record_max_bytes=2000",
            "gateway_record_keep=2",
        ),
    )
    for i in range(6):
        gateway.send(f"/{i}", host="orders.local", headers=bearer(token, Cookie="session=s3cret"))
    assert gateway.stop() == 0
    files = [recording, recording.with_name("traffic.mitm.1"), recording.with_name("traffic.mitm.2")]
    assert all(f.exists() for f in files) and not recording.with_name("traffic.mitm.3").exists()
    flows = [flow for f in reversed(files) for flow in recorded(f)]
    assert 1 <= len(flows) < 6, "the oldest rotated file is gone"
    paths = [f.request.path for f in flows]
    assert paths == sorted(paths), "oldest first across the rotated files"
    for flow in flows:
        client = http.Request.from_state(flow.metadata[CLIENT_REQUEST_KEY])
        for request in (client, flow.request):
            assert "Authorization" not in request.headers and "Cookie" not in request.headers
        assert flow.metadata[STRIPPED_KEY] == ["authorization", "cookie"]
        # Who the client was stays in the decision: a replay assumes it.
        assert Decision.recorded(flow).user["sub"] == "demo-user"
        # (The demo upstream echoes the headers it got, so its answer still shows the token.)
        assert token not in repr(client.get_state()) + repr(flow.request.get_state())


def test_sampling_zero_records_nothing(start_gateway, walkthrough_config, tmp_path):
    recording = tmp_path / "traffic.mitm"
    gateway = start_gateway(
        walkthrough_config, options=(f"gateway_record={recording}", "gateway_record_sample=0")
    )
    assert gateway.send("/", host="customers.local").status == 401
    assert gateway.stop() == 0
    assert not recording.exists()
