"""OpenTelemetry traces (#18): each request's spans, through a real mitmdump with the gateway, sent
to a real OTLP/HTTP receiver on 127.0.0.1 (tests/otlp_receiver.py, decoding the protobuf with
opentelemetry-proto), and the trace context the upstream receives."""

from __future__ import annotations

import http.client
import json
import re
import time

import pytest
from test_jwks import Signer

from conftest import one_pipeline
from harness import JwksServer, free_port, listening_pids, send, wait_until
from otlp_receiver import OtlpReceiver, Span

STEPS = """\
- rate-limit: [{action: {max: 2, windowMs: 60000}}]
- jwt: [{action: {secretOrPublicKeyFile: PUBLIC_KEY, checkCredentialExistence: false}}]
- proxy: [{action: {serviceEndpoint: backend}}]"""
ENDPOINT = "host: '*', paths: ['/things/:id']"
PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"


@pytest.fixture
def receiver():
    server = OtlpReceiver()
    yield server
    server.stop()


def tracing(endpoint: str, **settings: object) -> str:
    fields = ", ".join(
        f"{key}: {json.dumps(value)}" for key, value in {"endpoint": endpoint, **settings}.items()
    )
    return f"tracing: {{{fields}}}\n"


def traced_gateway(start_gateway, upstream_url: str, public_key, extra: str):  # type: ignore[no-untyped-def]
    steps = STEPS.replace("PUBLIC_KEY", str(public_key))
    return start_gateway(one_pipeline(upstream_url, steps, endpoint=ENDPOINT, extra=extra))


def upstream_traceparent(reply) -> str:  # type: ignore[no-untyped-def]
    return json.loads(reply.body)["headers"]["traceparent"]


def spans_of(receiver: OtlpReceiver, trace_id: str, count: int) -> dict[str, list[Span]]:
    assert wait_until(lambda: len(receiver.trace(trace_id)) >= count, timeout=10), receiver.trace(trace_id)
    by_kind: dict[str, list[Span]] = {}
    for span in receiver.trace(trace_id):
        by_kind.setdefault(span.kind, []).append(span)
    return by_kind


def test_a_proxied_request_is_a_server_span_a_span_per_step_and_a_client_span(
    start_gateway, upstreams, rsa_keys, token, receiver, tmp_path
):
    extra = tracing(receiver.url, serviceName="gateway-under-test") + "accessLog: {path: access.log}\n"
    # The serviceEndpoint's url has a path: the upstream is sent /v2/things/42.
    gateway = traced_gateway(start_gateway, upstreams["customers"].url + "/v2", rsa_keys[1], extra)
    reply = gateway.send("/things/42", headers={"Authorization": f"Bearer {token}", "User-Agent": "t/1"})
    assert reply.status == 200
    version, trace_id, parent_id, flags = upstream_traceparent(reply).split("-")
    assert (version, flags) == ("00", "01")
    spans = spans_of(receiver, trace_id, 5)

    (server,) = spans["server"]
    assert server.parent_span_id == "", "no traceparent came in: the gateway's span is the root"
    assert server.name == "GET /things/:id"
    assert server.attributes["http.route"] == "/things/:id"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/things/42"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["client.address"] == "127.0.0.1"
    assert server.attributes["user_agent.original"] == "t/1"
    assert server.attributes["mitmgateway.pipeline"] == "api"
    assert server.attributes["mitmgateway.request_id"] == reply.headers["x-request-id"]
    assert server.status == 0
    assert server.resource["service.name"] == "gateway-under-test"

    steps = sorted(spans["internal"], key=lambda s: s.attributes["mitmgateway.step.index"])
    assert [(s.name, s.attributes["mitmgateway.step.outcome"]) for s in steps] == [
        ("rate-limit", "passed"),
        ("jwt", "passed"),
        ("proxy", "passed"),
    ]
    assert all(s.parent_span_id == server.span_id for s in steps)

    (client,) = spans["client"]
    assert client.span_id == parent_id, "the upstream's parent is the gateway's client span"
    assert client.parent_span_id == server.span_id
    assert client.attributes["server.port"] == upstreams["customers"].port
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["mitmgateway.service_endpoint"] == "backend"
    assert client.attributes["url.full"] == f"http://127.0.0.1:{upstreams['customers'].port}/v2/things/42"
    assert "error.type" not in client.attributes
    # In time, each inside the one it belongs to, and the steps before the upstream.
    assert server.start_ns <= steps[0].start_ns <= steps[-1].end_ns <= client.start_ns
    assert client.start_ns <= client.end_ns <= server.end_ns

    assert wait_until(lambda: (tmp_path / "access.log").exists() and (tmp_path / "access.log").read_text())
    logged = json.loads((tmp_path / "access.log").read_text().splitlines()[-1])
    assert logged["traceparent"].split("-")[1] == trace_id


def test_a_sampled_traceparent_that_came_in_is_the_parent_and_an_unsampled_one_exports_nothing(
    start_gateway, upstreams, receiver
):
    # sampleRatio 0: only the client's own decision samples.
    gateway = start_gateway(
        one_pipeline(upstreams["customers"].url, PROXY, extra=tracing(receiver.url, sampleRatio=0))
    )
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = gateway.send("/things/1", headers={"traceparent": incoming})
    _, trace_id, parent_id, flags = upstream_traceparent(reply).split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and flags == "01"
    spans = spans_of(receiver, trace_id, 3)
    (server,) = spans["server"]
    assert server.parent_span_id == "b7ad6b7169203331"
    assert spans["client"][0].span_id == parent_id

    unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    reply = gateway.send("/things/2", headers={"traceparent": unsampled})
    _, trace_id, parent_id, flags = upstream_traceparent(reply).split("-")
    assert trace_id == "1af7651916cd43dd8448eb211c80319c" and flags == "00"
    assert parent_id != "c7ad6b7169203331", "the upstream's parent is the gateway's (unrecorded) span"
    root = gateway.send("/things/3")
    assert upstream_traceparent(root).endswith("-00"), "a new trace, not sampled at ratio 0"
    time.sleep(1.5)  # three of the exporter's 0.5 s batch delays: an export would have come by now
    assert {s.trace_id for s in receiver.spans} == {"0af7651916cd43dd8448eb211c80319c"}


def test_refusals_end_at_the_step_that_answered(start_gateway, upstreams, rsa_keys, token, receiver):
    gateway = traced_gateway(start_gateway, upstreams["customers"].url, rsa_keys[1], tracing(receiver.url))
    no_token = gateway.send("/things/1", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert no_token.status == 401
    spans = spans_of(receiver, "1" * 32, 3)
    assert spans["server"][0].attributes["http.response.status_code"] == 401
    assert spans["server"][0].attributes["mitmgateway.answered_by"] == "jwt"
    assert spans["server"][0].status == 0, "a 4xx is the client's error, not the server span's"
    steps = sorted(spans["internal"], key=lambda s: s.attributes["mitmgateway.step.index"])
    assert [(s.name, s.attributes["mitmgateway.step.outcome"]) for s in steps] == [
        ("rate-limit", "passed"),
        ("jwt", "answered"),
    ]
    assert steps[1].attributes["http.response.status_code"] == 401
    assert "client" not in spans

    # The rate limit (2 a minute, per client) is spent by the next two: the third is a 429.
    for i in range(3):
        reply = gateway.send(
            "/things/1",
            headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{i + 3:032x}-{'2' * 16}-01"},
        )
    assert reply.status == 429
    spans = spans_of(receiver, f"{5:032x}", 2)
    (limited,) = spans["internal"]
    assert (limited.name, limited.attributes["mitmgateway.step.outcome"]) == ("rate-limit", "answered")
    assert limited.attributes["http.response.status_code"] == 429


def test_an_upstream_failure_is_an_error_on_the_client_span_with_its_retry(start_gateway, receiver):
    down = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    config = one_pipeline(down[0], PROXY, extra=tracing(receiver.url))
    gateway = start_gateway(config.replace(f"url: '{down[0]}'", f"urls: ['{down[0]}', '{down[1]}']"))
    reply = gateway.send("/", headers={"traceparent": "00-" + "7" * 32 + "-" + "2" * 16 + "-01"})
    assert reply.status == 502
    spans = spans_of(receiver, "7" * 32, 3)
    (server,) = spans["server"]
    # mitmproxy answered the client itself (its error page): the flow ended in an error.
    assert server.status == 2 and server.attributes["error.type"]
    (client,) = spans["client"]
    assert client.status == 2 and client.attributes["error.type"]
    assert client.attributes["mitmgateway.upstream_moved"] is True, "sent to the second url"
    assert [name for name, _ in client.events] and all(
        name == "upstream failure" for name, _ in client.events
    )


def test_new_traces_are_sampled_at_the_configured_ratio(start_gateway, upstreams, receiver):
    config = one_pipeline(
        upstreams["customers"].url,
        PROXY,
        extra=tracing(receiver.url, sampleRatio=0.25),
    )
    gateway = start_gateway(config)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    sampled_upstream = 0
    for _ in range(1000):
        conn.request("GET", "/")
        reply = conn.getresponse()
        body = json.loads(reply.read())
        sampled_upstream += body["headers"]["traceparent"].endswith("-01")
    conn.close()
    # 1,000 draws at 0.25: mean 250, standard deviation 13.7; 5 of them either side.
    assert 181 <= sampled_upstream <= 319, sampled_upstream
    assert wait_until(lambda: len({s.trace_id for s in receiver.spans}) == sampled_upstream, timeout=10), (
        len({s.trace_id for s in receiver.spans}),
        sampled_upstream,
    )


@pytest.mark.parametrize("collector", ["down", "hanging"])
def test_a_collector_down_or_hanging_costs_requests_nothing_but_dropped_spans(
    start_gateway, upstreams, collector
):
    hanging = OtlpReceiver(hang_seconds=30) if collector == "hanging" else None
    endpoint = hanging.url if hanging else f"http://127.0.0.1:{free_port()}/v1/traces"
    admin = free_port()
    extra = (
        tracing(endpoint, maxQueueSize=20, exportTimeoutMs=1000)
        + f"admin: {{port: {admin}, hostname: 127.0.0.1}}\n"
    )
    try:
        gateway = start_gateway(one_pipeline(upstreams["customers"].url, PROXY, extra=extra))
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        statuses = []
        for _ in range(300):
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        assert statuses == [200] * 300

        def dropped() -> float:
            text = send(admin, "/metrics").text
            match = re.search(r"^mitmgateway_trace_spans_dropped_total (\S+)$", text, re.MULTILINE)
            return float(match.group(1)) if match else 0.0

        # 300 requests' 600 spans through a queue of 20 that is not emptied.
        assert wait_until(lambda: dropped() >= 300, timeout=10), dropped()
    finally:
        if hanging:
            hanging.stop()


def test_a_tracing_section_that_makes_no_sense_is_refused(tmp_path):
    from mitmgateway.config.assemble import load_config
    from mitmgateway.config.errors import ConfigError
    from mitmgateway.policies import StepState

    for setting, key in (
        ("{endpoint: 'http://127.0.0.1:4318/v1/traces', sampleRatio: 2}", "tracing.sampleRatio"),
        ("{endpoint: 'grpc://collector:4317'}", "tracing.endpoint"),
        ("{sampleRatio: 0.5}", "tracing.endpoint"),
        ("{endpoint: 'http://c/v1/traces', headers: {'bad name': x}}", "tracing.headers"),
    ):
        config = tmp_path / "gateway.config.yml"
        text = one_pipeline("http://127.0.0.1:9", PROXY)
        config.write_text(text.replace("{port}", "8080") + f"tracing: {setting}\n")
        with pytest.raises(ConfigError) as info:
            load_config(config, StepState())
        assert key in str(info.value), (setting, str(info.value))


def test_each_worker_exports_its_own_spans(start_gateway, upstreams, receiver):
    config = one_pipeline(upstreams["customers"].url, PROXY, extra=tracing(receiver.url))
    gateway = start_gateway(config, runner="mitmgateway", workers=2)
    assert wait_until(lambda: len(listening_pids(gateway.port)) == 2, timeout=20)
    sent = set()
    for _ in range(40):  # new connections: the kernel spreads them over both workers
        sent.add(upstream_traceparent(send(gateway.port, "/")).split("-")[1])
    assert wait_until(lambda: sent <= {s.trace_id for s in receiver.spans if s.kind == "server"}, timeout=10)
    workers = {s.resource.get("mitmgateway.worker") for s in receiver.spans}
    instances = {s.resource["service.instance.id"] for s in receiver.spans}
    assert workers == {1, 2} and len(instances) == 2, (workers, instances)


def test_a_shared_rate_limit_store_round_trip_is_an_event_on_its_step(
    start_gateway, upstreams, redis_server, receiver
):
    steps = f"- rate-limit: [{{action: {{max: 100, windowMs: 60000}}}}]\n{PROXY}"
    store = f"rateLimitStore: {{type: redis, url: '{redis_server.url}'}}\n"
    gateway = start_gateway(
        one_pipeline(upstreams["customers"].url, steps, extra=store + tracing(receiver.url))
    )
    reply = gateway.send("/", headers={"traceparent": "00-" + "9" * 32 + "-" + "2" * 16 + "-01"})
    assert reply.status == 200
    spans = spans_of(receiver, "9" * 32, 4)
    (limit,) = [s for s in spans["internal"] if s.name == "rate-limit"]
    ((name, attributes),) = limit.events
    assert name == "rate-limit store" and attributes["duration_ms"] >= 0


def test_a_recording_made_with_tracing_replays_unchanged_under_its_config(
    start_gateway, upstreams, receiver, tmp_path, capsys
):
    from mitmgateway.whatif import cli as whatif

    recording = tmp_path / "traced.mitm"
    gateway = start_gateway(
        one_pipeline(upstreams["customers"].url, PROXY, extra=tracing(receiver.url)),
        options=(f"gateway_record={recording}",),
    )
    # A client's own traceparent (given the gateway's span as parent) and none (a new trace).
    gateway.send("/a", headers={"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"})
    gateway.send("/b")
    assert gateway.stop() == 0
    status = whatif.main([str(recording), "-c", str(gateway.config)])
    out = capsys.readouterr().out
    assert status == 0, out


def test_a_cache_hit_is_an_event_on_the_cache_step(start_gateway, upstreams, receiver):
    steps = f"- cache: [{{action: {{ttl: 60}}}}]\n{PROXY}"
    config = one_pipeline(upstreams["customers"].url, steps, extra=tracing(receiver.url))
    gateway = start_gateway(config.replace("policies: [jwt,", "policies: [cache, jwt,"))
    for trace in ("5" * 32, "6" * 32):
        reply = gateway.send(
            "/kept?cacheControl=max-age%3D60", headers={"traceparent": f"00-{trace}-{'2' * 16}-01"}
        )
        assert reply.status == 200
    miss, hit = (
        next(s for s in spans_of(receiver, t, 2)["internal"] if s.name == "cache")
        for t in ("5" * 32, "6" * 32)
    )
    assert [name for name, _ in miss.events] == ["cache miss"]
    assert [name for name, _ in hit.events] == ["cache hit"] and hit.attributes["mitmgateway.cache"] == "hit"


def test_a_jwks_fetch_for_a_new_key_is_an_event_on_the_jwt_step(start_gateway, upstreams, receiver):
    provider = JwksServer()
    try:
        first, rotated = Signer("r1"), Signer("r2")
        provider.document = {"keys": [first.jwk]}
        action = f"jwksUri: '{provider.url}', jwksRefreshInterval: 1, checkCredentialExistence: false"
        steps = f"- jwt: [{{action: {{{action}}}}}]\n{PROXY}"
        gateway = start_gateway(one_pipeline(upstreams["customers"].url, steps, extra=tracing(receiver.url)))
        assert gateway.send("/", headers={"Authorization": f"Bearer {first.token()}"}).status == 200
        provider.document = {"keys": [first.jwk, rotated.jwk]}
        time.sleep(1.1)  # jwksRefreshInterval: a kid it does not know may be fetched now
        reply = gateway.send(
            "/",
            headers={
                "Authorization": f"Bearer {rotated.token()}",
                "traceparent": f"00-{'8' * 32}-{'2' * 16}-01",
            },
        )
        assert reply.status == 200
        (jwt_step,) = [s for s in spans_of(receiver, "8" * 32, 4)["internal"] if s.name == "jwt"]
        ((name, attributes),) = jwt_step.events
        assert name == "jwks fetch" and attributes["url.full"] == provider.url
        assert attributes["duration_ms"] >= 0
    finally:
        provider.stop()
