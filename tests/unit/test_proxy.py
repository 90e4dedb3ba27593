"""The proxy policy: where a request goes and what it carries, under mitmproxy's test helpers."""

from __future__ import annotations

import pytest

from gateway_unit import gateway_for, make_flow, upstream_response
from mitmgateway.decision import Decision

CONFIG = """\
http: {{port: 8080}}
{extra}
apiEndpoints:
  api: {{host: api.local, paths: ['/api/*', '/users/:id']}}
serviceEndpoints:
  backend: {{url: 'http://127.0.0.1:9001'}}
  based: {{url: 'https://backend.internal:8443/base/'}}
  pool: {{urls: ['http://127.0.0.1:9001', 'http://127.0.0.2:9002', 'http://127.0.0.3:9003']}}
policies: [proxy]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - proxy: [{{action: {{{action}}}}}]
"""


@pytest.fixture
def gateway_with(tmp_path):
    return lambda action, extra="": gateway_for(tmp_path, CONFIG.format(action=action, extra=extra))


def forward(gateway, flow):
    gateway.requestheaders(flow)
    assert flow.response is None, flow.response and flow.response.text
    return flow.request


def test_change_origin_and_forwarded_headers(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        request = forward(gateway, make_flow(path="/api/items?q=1"))
        assert request.url == "http://127.0.0.1:9001/api/items?q=1"
        assert request.headers["Host"] == "127.0.0.1:9001"
        assert request.headers["X-Forwarded-For"] == "192.0.2.10"
        assert request.headers["X-Forwarded-Proto"] == "http"
        assert request.headers["X-Forwarded-Host"] == "api.local"
        assert len(request.headers["X-Request-Id"]) == 32


def test_change_origin_false_keeps_the_clients_host(gateway_with):
    with gateway_with("serviceEndpoint: backend, changeOrigin: false, xfwd: false") as gateway:
        request = forward(gateway, make_flow(path="/api/x"))
        assert (request.host, request.port) == ("127.0.0.1", 9001)
        assert request.headers["Host"] == "api.local"
        assert "X-Forwarded-For" not in request.headers


@pytest.mark.parametrize(
    ("action", "path", "expected"),
    [
        ("serviceEndpoint: based", "/api/x?y=1", "https://backend.internal:8443/base/api/x?y=1"),
        ("serviceEndpoint: based, stripPath: true", "/api/x?y=1", "https://backend.internal:8443/base/x?y=1"),
        ("serviceEndpoint: based, stripPath: true", "/API/", "https://backend.internal:8443/base/"),
        ("serviceEndpoint: based, stripPath: true", "/users/7", "https://backend.internal:8443/base/7"),
        ("serviceEndpoint: based, prependPath: false", "/api/x", "https://backend.internal:8443/api/x"),
        ("serviceEndpoint: based, ignorePath: true", "/api/x?y=1", "https://backend.internal:8443/base"),
    ],
)
def test_paths(gateway_with, action, path, expected):
    with gateway_with(action) as gateway:
        request = forward(gateway, make_flow(path=path))
        assert request.url == expected
        assert request.headers["Host"] == "backend.internal:8443"


def test_round_robin_over_urls(gateway_with):
    with gateway_with("serviceEndpoint: pool") as gateway:
        hosts = [forward(gateway, make_flow(path="/api/x")).host for _ in range(4)]
        assert hosts == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]


def test_client_x_forwarded_for_replaced_unless_from_trusted_proxy(gateway_with):
    with gateway_with("serviceEndpoint: backend", extra="trustedProxies: ['10.0.0.0/8']") as gateway:
        spoofed = forward(gateway, make_flow(path="/api/x", headers={"X-Forwarded-For": "1.2.3.4"}))
        assert spoofed.headers["X-Forwarded-For"] == "192.0.2.10"
        trusted = make_flow(path="/api/x", peer="10.0.0.1", headers={"X-Forwarded-For": "198.51.100.1"})
        assert forward(gateway, trusted).headers["X-Forwarded-For"] == "198.51.100.1, 10.0.0.1"


def test_request_id_kept_when_sane_replaced_when_not(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        flow = make_flow(path="/api/x", headers={"X-Request-Id": "abc-123"})
        kept = forward(gateway, flow)
        assert kept.headers["X-Request-Id"] == "abc-123"
        upstream_response(flow, gateway)
        assert flow.response.headers["X-Request-Id"] == "abc-123"
        odd = forward(gateway, make_flow(path="/api/x", headers={"X-Request-Id": "a b\tc" * 40}))
        assert len(odd.headers["X-Request-Id"]) == 32


def test_hop_by_hop_headers_removed_both_ways(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        flow = make_flow(
            path="/api/x",
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "Keep-Alive": "timeout=5",
                "X-Secret-Hop": "1",
                "Proxy-Authorization": "Basic eA==",
                "TE": "gzip",
                "Upgrade": "h2c",
                "X-Kept": "yes",
            },
        )
        request = forward(gateway, flow)
        for name in ("Connection", "Keep-Alive", "X-Secret-Hop", "Proxy-Authorization", "TE", "Upgrade"):
            assert name not in request.headers, name
        assert request.headers["X-Kept"] == "yes"
        upstream_response(
            flow, gateway, {"Connection": "keep-alive, X-Internal", "X-Internal": "1", "X-App": "a"}
        )
        assert "Connection" not in flow.response.headers
        assert "X-Internal" not in flow.response.headers
        assert flow.response.headers["X-App"] == "a"


@pytest.mark.parametrize(
    "request_headers,response_headers",
    [({"Connection": "close"}, {}), ({}, {"Connection": "close, X-Internal", "X-Internal": "1"})],
    ids=["client-closes", "upstream-closes"],
)
def test_a_close_either_side_asked_for_stays_visible_to_mitmproxy(
    gateway_with, request_headers, response_headers
):
    # mitmproxy decides from the (stripped) headers whether to keep each connection open.
    with gateway_with("serviceEndpoint: backend") as gateway:
        flow = make_flow(path="/api/x", headers=request_headers)
        request = forward(gateway, flow)
        assert "Connection" not in request.headers
        upstream_response(flow, gateway, response_headers)
        assert flow.response.headers.get_all("Connection") == ["close"]
        assert "X-Internal" not in flow.response.headers


WEBSOCKET_HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_websocket_handshake_keeps_upgrade(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        request = forward(gateway, make_flow(path="/api/ws", headers=WEBSOCKET_HANDSHAKE))
        assert request.headers["Upgrade"] == "websocket"
        assert request.headers["Connection"] == "Upgrade"


def test_a_handshakes_connection_header_names_only_the_upgrade(gateway_with):
    # Other names in it would have a next hop drop headers the gateway set (X-Forwarded-For).
    headers = {**WEBSOCKET_HANDSHAKE, "Connection": "Upgrade, X-Forwarded-For, Content-Length"}
    with gateway_with("serviceEndpoint: backend") as gateway:
        request = forward(gateway, make_flow(path="/api/ws", headers=headers))
        assert request.headers.get_all("Connection") == ["Upgrade"]
        assert request.headers["X-Forwarded-For"] == "192.0.2.10"
        assert request.headers["content-length"] == "0"


@pytest.mark.parametrize(
    "changed",
    [
        {"Upgrade": "h2c"},
        {"Upgrade": "websocket, h2c"},
        {"Upgrade": "TLS/1.2"},
        {"Sec-WebSocket-Version": "8"},
        {"Sec-WebSocket-Key": "c2hvcnQ="},  # not 16 bytes
        {"Connection": "keep-alive"},
    ],
)
def test_any_other_upgrade_is_removed_before_forwarding(gateway_with, changed):
    with gateway_with("serviceEndpoint: backend") as gateway:
        request = forward(gateway, make_flow(path="/api/ws", headers={**WEBSOCKET_HANDSHAKE, **changed}))
        assert "Upgrade" not in request.headers
        assert "Connection" not in request.headers


def test_unmatched_path_is_404_and_shows_the_clients_host(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        flow = make_flow(path="/admin")
        gateway.requestheaders(flow)
        assert (flow.response.status_code, flow.response.text) == (404, "Not Found")
        assert flow.request.host == "api.local"
        assert flow.comment == "gateway: no apiEndpoint matched; answered 404 by no apiEndpoint"


def test_replayed_flow_is_routed_as_first_sent(gateway_with):
    with gateway_with("serviceEndpoint: based, stripPath: true") as gateway:
        flow = make_flow(path="/api/x")
        forward(gateway, flow)
        replay = flow.copy()
        replay.is_replay = "request"
        replay.live = True
        request = forward(gateway, replay)
        assert request.url == "https://backend.internal:8443/base/x"
        assert request.headers["X-Forwarded-Host"] == "api.local"


def test_the_canonical_path_is_matched_stripped_and_forwarded_and_the_raw_target_kept(gateway_with):
    with gateway_with("serviceEndpoint: based, stripPath: true") as gateway:
        flow = make_flow(path="//%61pi//caf%c3%a9?q=%2f")
        request = forward(gateway, flow)
        assert request.url == "https://backend.internal:8443/base/caf%C3%A9?q=%2f"
        origin = flow.metadata["gateway"]["origin"]
        assert origin == {
            "host": "api.local",
            "path": "/api/caf%C3%A9?q=%2f",
            "target": "//%61pi//caf%c3%a9?q=%2f",
        }
        assert "target '//%61pi//caf%c3%a9?q=%2f' read as '/api/caf%C3%A9?q=%2f'" in flow.comment
        # A replay is judged from the target as the client sent it.
        replay = flow.copy()
        replay.is_replay = "request"
        replay.live = True
        assert forward(gateway, replay).url == request.url


def test_a_refused_target_is_recorded_with_its_reason(gateway_with):
    with gateway_with("serviceEndpoint: backend") as gateway:
        flow = make_flow(path="/api%2F..%2Fadmin")
        gateway.requestheaders(flow)
        assert (flow.response.status_code, flow.response.headers["Connection"]) == (400, "close")
        assert flow.metadata["gateway"]["answeredBy"] == "escaped slash in path"
        assert flow.comment == "gateway: no apiEndpoint matched; answered 400 by escaped slash in path"


def test_strip_path_that_would_leave_a_dot_segment_is_refused(tmp_path):
    # /api* strips "/api" mid-segment: /api../secret would go upstream as /base/../secret.
    config = CONFIG.format(action="serviceEndpoint: based, stripPath: true", extra="").replace(
        "paths: ['/api/*', '/users/:id']", "paths: ['/api*']"
    )
    with gateway_for(tmp_path, config) as gateway:
        flow = make_flow(path="/api../secret")
        gateway.requestheaders(flow)
        assert flow.response.status_code == 400
        assert flow.metadata["gateway"]["refusal"] == "stripPath left a dot-segment"
        assert forward(gateway, make_flow(path="/api..x/y")).path == "/base/..x/y"


CANONICAL_EVERYWHERE = """\
http: {port: 8080}
apiEndpoints: {api: {host: api.local, paths: ['/api/*']}}
serviceEndpoints: {backend: {url: 'http://127.0.0.1:9001'}}
policies: [terminate, rate-limit, proxy]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - terminate: [{condition: {name: pathExact, path: /api/x}, action: {statusCode: 418}}]
      - rate-limit: [{action: {max: 1, rateLimitBy: '${req.path}'}}]
      - proxy: [{action: {serviceEndpoint: backend}}]
"""


def test_conditions_and_templates_see_the_canonical_path(tmp_path):
    with gateway_for(tmp_path, CANONICAL_EVERYWHERE) as gateway:
        flow = make_flow(path="//%61pi/x")
        gateway.requestheaders(flow)
        assert flow.response.status_code == 418, "pathExact saw another spelling than routing"
        # One rate-limit key (a template of req.path) for every spelling of one path.
        assert forward(gateway, make_flow(path="/api/%79")).path == "/api/y"
        limited = make_flow(path="/api//y")
        gateway.requestheaders(limited)
        assert limited.response.status_code == 429


def test_a_report_only_proxy_step_never_forwards_what_it_refused(tmp_path):
    # mode: report must not turn a front-door guard into a hint: the refused request is not
    # forwarded (it has no upstream), it is answered 404 as a pipeline that does not proxy.
    config = (
        CONFIG.format(action="serviceEndpoint: based, stripPath: true", extra="")
        .replace("paths: ['/api/*', '/users/:id']", "paths: ['/api*']")
        .replace("- proxy: [{action:", "- proxy: [{mode: report, action:")
    )
    with gateway_for(tmp_path, config) as gateway:
        flow = make_flow(path="/api../secret")
        gateway.requestheaders(flow)
        decision = flow.metadata["gateway"]
        assert (flow.response.status_code, decision["answeredBy"]) == (404, "no proxy step")
        assert decision["reports"] == [["proxy", 400, None]]
        assert "upstream" not in decision, "never aimed at an upstream"


def test_a_decision_alone_names_the_upstream_and_leaves_the_request_as_sent(gateway_with):
    # A shadow config's decision (unsent): the same upstream and serviceEndpoint as a forwarded
    # request's, and nothing that only shapes the messages: no rewrite, no response callbacks.
    with gateway_with("serviceEndpoint: pool, proxyTimeout: 5000") as gateway:
        config = gateway.config
        forwarded = forward(gateway, make_flow(path="/api/x"))
        flow = make_flow(path="/api/x")
        sent = flow.request.copy()
        assert gateway.gate.judge(flow, config, unsent=True) is None
        decision = Decision.of(flow)
        assert (decision.answered_by, decision.service_endpoint) == (None, "pool")
        assert decision.upstream == "127.0.0.2:9002", "the pool's next url, as forwarding would pick"
        assert forwarded.host == "127.0.0.1"
        flow.request.headers.pop("traceparent")  # (the gate's, on every request it judges)
        assert flow.request.data == sent.data, "the request as the client sent it"
        context = gateway.gate.exchanges[flow]
        assert context.routed and context.target is None
        assert not context._response_callbacks and not context._forward_callbacks
        assert flow.comment == "", "never shown in mitmweb"
