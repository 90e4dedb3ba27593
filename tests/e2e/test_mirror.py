"""Mirrors (a proxy action's ``mirror:``): a copy of each request goes to a second service once the
primary has answered, and the answers are compared. A mirror that answers the same, differently,
slowly, never or not at all (refused) changes nothing for the client, its answers or its timings,
while every result is counted in /metrics; a mirrored upload too large is skipped, never a
failure. Under both runners, a pool of two workers (metrics summed) and mitmweb (a mismatch is a
flow of its own)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from harness import LocalServer, RawServer, Upstream, admin_get, free_port, metric, wait_for_port, wait_until

HOST = "shop.local"
SAME = ["$.headers.Host", "$.served"]
"""What two instances of the demo upstream answer differently: the Host they were sent, and how
many requests each has served."""


@dataclass
class HeldUpstream(LocalServer):
    """An upstream in this process that holds every request until `release` (a mirror as slow as
    a test wants), keeping what it was sent."""

    released: threading.Event = field(default_factory=threading.Event)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        held = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                held.received.append((self.path, dict(self.headers.items()), body))
                held.released.wait(30)
                payload = b'{"held": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.released.set()
        super().stop()


@pytest.fixture
def mirrors() -> Iterator[dict[str, str]]:
    """Mirror urls: the demo upstream again (same answers), the demo upstream under another name
    (different answers), one that holds requests, one that never reads them (a listening socket
    nobody accepts from), and a port nobody listens on."""
    same, other, held = Upstream("orders"), Upstream("orders-next"), HeldUpstream()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    yield {
        "same": same.url,
        "other": other.url,
        "held": held.url,
        "silent": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "refused": f"http://127.0.0.1:{free_port()}",
        "_held": held,  # type: ignore[dict-item]
    }
    for started in (same, other, held):
        started.stop()
    silent.close()


MIRRORS = {
    # kind: the mirror's action, beside its serviceEndpoint
    "plain": None,
    "same": f"maxBodyBytes: 64kb, ignoreJsonPaths: {SAME}",
    "other": f"ignoreJsonPaths: {SAME}",
    "held": "maxInFlight: 4",
    "silent": "timeout: 1000, maxInFlight: 32",
    "refused": "",
}


def mirror_config(primary: str, mirrors: dict[str, str], admin_port: int) -> str:
    endpoints = "".join(f"  {kind}: {{host: {HOST}, paths: ['/{kind}', '/{kind}/*']}}\n" for kind in MIRRORS)
    services = "".join(f"  {kind}: {{url: '{mirrors[kind]}'}}\n" for kind in MIRRORS if kind != "plain")
    pipelines = ""
    for kind, action in MIRRORS.items():
        mirror = "" if action is None else f", mirror: {{serviceEndpoint: {kind}, {action}}}"
        pipelines += (
            f"  {kind}:\n    apiEndpoints: [{kind}]\n    policies:\n"
            f"      - proxy: [{{action: {{serviceEndpoint: primary{mirror}}}}}]\n"
        )
    return (
        f"http: {{port: {{port}}}}\nadmin: {{port: {admin_port}}}\n"
        f"apiEndpoints:\n{endpoints}serviceEndpoints:\n  primary: {{url: '{primary}'}}\n{services}"
        f"policies: [proxy]\npipelines:\n{pipelines}"
    )


def mirrored(admin_port: int, service: str, result: str) -> float:
    text = admin_get(admin_port, "/metrics")[1]
    return metric(text, "mitmgateway_mirror_total", service=service, result=result)


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.parametrize(("runner", "workers"), [("mitmdump", 1), ("mitmgateway", 1), ("mitmgateway", 2)])
def test_a_mirror_never_changes_the_primarys_answers_or_timings_and_its_results_are_counted(
    start_gateway, upstreams, mirrors, runner, workers
):
    admin_port = free_port()
    config = mirror_config(upstreams["orders"].url, mirrors, admin_port)
    gateway = start_gateway(config, runner=runner, workers=workers)
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    rounds = 20
    latencies: dict[str, list[float]] = {kind: [] for kind in MIRRORS}
    request_ids: dict[str, str] = {}
    for i in range(rounds):
        for kind in MIRRORS:
            started = time.perf_counter()
            reply = gateway.send(f"/{kind}/{i}", host=HOST)
            latencies[kind].append(time.perf_counter() - started)
            assert reply.status == 200, (kind, reply.status, reply.text)
            answer = json.loads(reply.body)
            assert (answer["service"], answer["path"]) == ("orders", f"/{kind}/{i}"), "the primary's answer"
            request_ids[f"/{kind}/{i}"] = reply.headers["X-Request-Id"]

    # The held mirror holds every copy, the silent one never answers: the primary did not wait.
    held = mirrors["_held"]
    assert not held.released.is_set()
    for kind in ("held", "silent", "refused", "other"):
        assert p99(latencies[kind]) < p99(latencies["plain"]) + 0.5, (kind, latencies[kind])

    # At most maxInFlight copies on their way (per worker): the rest skipped, busy.
    assert wait_until(lambda: len(held.received) + mirrored(admin_port, "held", "skipped") == rounds)
    sent = len(held.received)
    assert 4 <= sent <= 4 * workers
    # What a mirror got is what the primary got, with the mirror's Host.
    for path, headers, _body in held.received:
        assert headers["Host"] == mirrors["held"].removeprefix("http://")
        assert headers["X-Request-Id"] == request_ids[path]
        assert headers["X-Forwarded-Host"] == HOST
    held.released.set()

    expected = {
        ("same", "match"): rounds,
        ("other", "mismatch"): rounds,
        ("held", "mismatch"): sent,
        ("silent", "error"): rounds,
        ("refused", "error"): rounds,
    }
    assert wait_until(
        lambda: all(mirrored(admin_port, *key) == n for key, n in expected.items()), timeout=20
    ), {key: mirrored(admin_port, *key) for key in expected}
    assert mirrored(admin_port, "same", "mismatch") == mirrored(admin_port, "same", "error") == 0

    # Uploads: a small body is mirrored (and matches, the same bytes echoed); one over
    # maxBodyBytes (64kb), and one large enough to stream through, are skipped, never failed.
    for body, result in ((b"x" * 1000, "match"), (b"y" * 100_000, "skipped"), (b"z" * (3 << 20), "skipped")):
        before = mirrored(admin_port, "same", result)
        reply = gateway.send("/same/upload", host=HOST, method="POST", body=body)
        assert reply.status == 200
        assert json.loads(reply.body)["bodyLength"] == len(body)
        assert wait_until(lambda r=result, b=before: mirrored(admin_port, "same", r) == b + 1)

    if workers == 1:
        log = gateway.log()
        assert "mirror other differs on GET /other/0 (request id " in log
        assert '$.service: "orders" ≠ "orders-next"' in log


def test_mitmweb_shows_a_mirrors_different_answer_as_a_flow_of_its_own(start_gateway, upstreams, mirrors):
    admin_port, web_port = free_port(), free_port()
    config = mirror_config(upstreams["orders"].url, mirrors, admin_port)
    gateway = start_gateway(
        config,
        runner="mitmweb",
        options=("web_open_browser=false", f"web_port={web_port}", "web_host=127.0.0.1"),
    )
    wait_for_port(web_port, gateway.process, gateway.log_path)
    reply = gateway.send("/other/1", host=HOST)
    assert reply.status == 200
    assert gateway.send("/same/1", host=HOST).status == 200

    def flows() -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/flows", timeout=10) as response:
            return json.load(response)

    assert wait_until(lambda: len(flows()) == 3, timeout=10), flows()
    listed = flows()
    (shown,) = [f for f in listed if f["comment"].startswith("mirror ")]
    assert shown["comment"] == 'mirror other of GET /other/1: $.service: "orders" ≠ "orders-next"'
    assert shown["marked"]
    assert shown["request"]["path"] == "/other/1"
    assert shown["request"]["port"] == int(mirrors["other"].rsplit(":", 1)[1])
    assert shown["response"]["status_code"] == 200
    (primary,) = [f for f in listed if f["request"]["path"] == "/other/1" and f is not shown]
    assert primary["comment"].endswith('; mirror other: mismatch ($.service: "orders" ≠ "orders-next")')
    # The matching one says nothing more.
    (matched,) = [f for f in listed if f["request"]["path"] == "/same/1"]
    assert "mirror" not in matched["comment"]


class DrippingUpstream(RawServer):
    """An upstream that answers a byte every 0.3 s: each wait shorter than a mirror's timeout,
    the whole answer much longer."""

    def answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    time.sleep(0.3)
                    conn.sendall(b"x")
            except OSError:
                return


def test_a_refused_request_is_never_mirrored_and_a_slow_answer_is_cut_at_the_timeout(
    start_gateway, upstreams, mirrors, request
):
    admin_port = free_port()
    dripping = DrippingUpstream()
    request.addfinalizer(dripping.stop)
    config = f"""\
http: {{port: {{port}}}}
admin: {{port: {admin_port}}}
apiEndpoints:
  scoped: {{host: {HOST}, paths: ['/scoped/*'], scopes: [admin]}}
  drip: {{host: {HOST}, paths: ['/drip/*']}}
serviceEndpoints:
  primary: {{url: '{upstreams["orders"].url}'}}
  held: {{url: '{mirrors["held"]}'}}
  drip: {{url: '{dripping.url}'}}
policies: [basic-auth, proxy]
pipelines:
  scoped:
    apiEndpoints: [scoped]
    policies:
      - basic-auth: [{{action: {{passThrough: true}}}}]
      - proxy: [{{action: {{serviceEndpoint: primary, mirror: {{serviceEndpoint: held}}}}}}]
  drip:
    apiEndpoints: [drip]
    policies:
      - proxy: [{{action: {{serviceEndpoint: primary, mirror: {{serviceEndpoint: drip, timeout: 1000}}}}}}]
"""
    gateway = start_gateway(config)
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    # Scopes without a consumer: refused after the pipeline ran its proxy step.
    assert gateway.send("/scoped/1", host=HOST, method="POST", body=b"secret").status == 403
    assert gateway.send("/drip/1", host=HOST).status == 200
    # The whole exchange within its timeout: cut after a second, not a hundred bytes later.
    assert wait_until(lambda: mirrored(admin_port, "drip", "error") == 1, timeout=6)
    held = mirrors["_held"]
    assert held.received == []
    assert all(
        mirrored(admin_port, "held", result) == 0 for result in ("match", "mismatch", "error", "skipped")
    )


class ChunkedUpstream(LocalServer):
    """An upstream whose answers stream (chunked, no Content-Length): `{"service": NAME, "path": ...}`."""

    def __init__(self, name: str) -> None:
        self.service = name
        self.start()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        service = self.service

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = json.dumps({"service": service, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (body[:10], body[10:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def test_an_answer_that_streams_is_compared_from_a_bounded_copy(start_gateway, request):
    admin_port = free_port()
    primary, same, other = (
        ChunkedUpstream("orders"),
        ChunkedUpstream("orders"),
        ChunkedUpstream("orders-next"),
    )
    for started in (primary, same, other):
        request.addfinalizer(started.stop)
    config = f"""\
http: {{port: {{port}}}}
admin: {{port: {admin_port}}}
apiEndpoints:
  same: {{host: {HOST}, paths: ['/same/*']}}
  other: {{host: {HOST}, paths: ['/other/*']}}
serviceEndpoints:
  primary: {{url: '{primary.url}'}}
  same: {{url: '{same.url}'}}
  other: {{url: '{other.url}'}}
policies: [proxy]
pipelines:
  same:
    apiEndpoints: [same]
    policies: [{{proxy: [{{action: {{serviceEndpoint: primary, mirror: {{serviceEndpoint: same}}}}}}]}}]
  other:
    apiEndpoints: [other]
    policies: [{{proxy: [{{action: {{serviceEndpoint: primary, mirror: {{serviceEndpoint: other}}}}}}]}}]
"""
    gateway = start_gateway(config)
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    for kind in ("same", "other"):
        reply = gateway.send(f"/{kind}/1", host=HOST)
        assert reply.status == 200 and json.loads(reply.body)["service"] == "orders"
    assert wait_until(lambda: mirrored(admin_port, "same", "match") == 1)
    assert wait_until(lambda: mirrored(admin_port, "other", "mismatch") == 1)
    assert mirrored(admin_port, "same", "skipped") == mirrored(admin_port, "other", "skipped") == 0
