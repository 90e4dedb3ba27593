"""Upstream faults and passive health checks, through a running gateway (#7).

A broken upstream gets its documented status (502, 504) and the gateway goes on serving; with
several urls behind a serviceEndpoint, an unreachable one is taken out of the rotation and its
requests go to the next url, so clients see no 502 while a healthy url remains.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
from collections.abc import Iterator

import pytest
from test_observability import metric

from harness import RawServer, admin_get, free_port, stop, wait_until
from mitmgateway.config import KeyPath
from mitmgateway.decision import Decision
from mitmgateway.upstreams.endpoints import parse_service_endpoint
from mitmgateway.upstreams.health import UpstreamPool
from processes import start_upstream

PROXY = "- proxy: [{action: {serviceEndpoint: backend, proxyTimeout: 1000}}]"


class FaultyUpstream(RawServer):
    """An upstream that misbehaves as the request path says: /reset, /garbage, /close, /partial,
    /trailers."""

    def answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1]
            if path == b"/reset":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                # An RST instead of a FIN: the response is cut off mid-body.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif path == b"/garbage":
                conn.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
            elif path == b"/trailers":
                chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
                conn.sendall(chunked + b"0\r\nX-Sum: 1\r\n\r\n")  # trailer fields
            elif path == b"/partial":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
            # /close: closed without a word
            elif path == b"/ok":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def faulty() -> Iterator[FaultyUpstream]:
    upstream = FaultyUpstream()
    yield upstream
    upstream.stop()


def two_services(faulty_url: str, healthy_url: str) -> str:
    return (
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        "apiEndpoints: {faulty: {host: faulty.local}, healthy: {host: healthy.local}}\n"
        f"serviceEndpoints: {{faulty: {{url: '{faulty_url}'}}, healthy: {{url: '{healthy_url}'}}}}\n"
        "policies: [proxy]\n"
        "pipelines:\n"
        "  faulty: {apiEndpoints: [faulty], policies: [{proxy: [{action: {serviceEndpoint: faulty}}]}]}\n"
        "  healthy: {apiEndpoints: [healthy], policies: [{proxy: [{action: {serviceEndpoint: healthy}}]}]}\n"
    )


@pytest.mark.parametrize("fault", ["/reset", "/garbage", "/close", "/partial"])
def test_a_broken_upstream_answer_is_a_502_and_other_routes_keep_working(
    start_gateway, upstreams, faulty, fault
):
    gateway = start_gateway(two_services(faulty.url, upstreams["orders"].url))
    for _ in range(3):
        reply = gateway.send(fault, host="faulty.local")
        assert (reply.status, reply.text) == (502, "Bad gateway.")
        assert gateway.send("/", host="healthy.local").status == 200
    assert gateway.send("/ok", host="faulty.local").text == "ok"
    assert "Traceback" not in gateway.log()


def test_an_upstream_answer_with_trailer_fields_is_cut_off_cleanly(start_gateway, upstreams, faulty):
    gateway = start_gateway(two_services(faulty.url, upstreams["orders"].url))
    # A chunked answer streams to the client as it comes: when its trailer fields arrive the head
    # is already out, so the client sees the answer end early rather than a 502.
    with pytest.raises(http.client.IncompleteRead):
        gateway.send("/trailers", host="faulty.local")
    assert gateway.send("/", host="healthy.local").status == 200
    assert "has crashed" not in gateway.log()


def pool_config(urls: list[str], admin_port: int, health: str = "{coolDownMs: 1500}") -> str:
    return (
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        f"admin: {{port: {admin_port}}}\n"
        "apiEndpoints: {api: {host: '*'}}\n"
        f"serviceEndpoints: {{backend: {{urls: {json.dumps(urls)}, healthCheck: {health}}}}}\n"
        "policies: [proxy]\n"
        "pipelines:\n"
        "  api: {apiEndpoints: [api], policies: [{proxy: [{action: {serviceEndpoint: backend}}]}]}\n"
    )


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_an_unreachable_url_is_skipped_retried_on_the_next_and_comes_back(start_gateway, upstreams, runner):
    dead_port, admin_port = free_port(), free_port()
    dead = f"http://127.0.0.1:{dead_port}"
    gateway = start_gateway(pool_config([dead, upstreams["orders"].url], admin_port), runner=runner)
    # Each request on its own connection, so each one makes a new upstream connection.
    replies = [gateway.send("/", method=m) for m in ["GET", "POST", "PUT", "DELETE"] * 5]
    assert [r.status for r in replies] == [200] * 20  # no 502 while a healthy url remains
    assert {json.loads(r.body)["service"] for r in replies} == {"orders"}
    assert gateway.log().count(f"upstream {dead} of serviceEndpoint backend is down (connect failed") == 1
    text = admin_get(admin_port, "/metrics")[1]
    assert metric(text, "mitmgateway_upstream_up", service="backend", upstream=dead) == 0
    assert metric(text, "mitmgateway_upstream_retries_total", service="backend") >= 1
    assert (
        metric(
            text,
            "mitmgateway_upstream_failures_total",
            service="backend",
            upstream=dead,
            reason="connect failed",
        )
        >= 1
    )

    revived, _ = start_upstream("revived", dead_port)
    try:
        # After the cool-down, a request tries the url again, finds it and brings it back.
        assert wait_until(lambda: json.loads(gateway.send("/").body)["service"] == "revived", timeout=10)
        assert wait_until(lambda: f"upstream {dead} of serviceEndpoint backend is back" in gateway.log())
        text = admin_get(admin_port, "/metrics")[1]
        assert metric(text, "mitmgateway_upstream_up", service="backend", upstream=dead) == 1
        services = {json.loads(gateway.send("/").body)["service"] for _ in range(4)}
        assert services == {"revived", "orders"}
    finally:
        stop(revived)


def test_a_url_that_does_not_accept_connections_in_time_is_skipped(start_gateway, upstreams):
    # A listener whose accept queue is full: the kernel drops new SYNs, connecting hangs.
    blackhole = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(blackhole.getsockname())
        fillers.append(filler)
    url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
    try:
        health = "{coolDownMs: 60000, connectTimeoutMs: 300}"
        gateway = start_gateway(pool_config([url, upstreams["orders"].url], free_port(), health))
        replies = [gateway.send("/") for _ in range(4)]
        assert [r.status for r in replies] == [200] * 4
        assert f"upstream {url} of serviceEndpoint backend is down (connect timeout)" in gateway.log()
    finally:
        for s in [blackhole, *fillers]:
            s.close()


def test_the_rotation_skips_urls_cooling_down_and_tries_one_when_all_are():
    service = parse_service_endpoint(
        "backend",
        {"urls": ["http://a:1", "http://b:2", "http://c:3"], "healthCheck": {"maxFailures": 2}},
        KeyPath("serviceEndpoints.backend"),
    )
    pool = UpstreamPool(service)
    a, b, c = service.upstreams
    assert [pool.pick() for _ in range(4)] == [a, b, c, a]
    record = Decision()
    pool.failed(b, "connect failed", record)
    assert record.upstream_down is None and pool.pick() is b  # one failure of two allowed
    pool.failed(b, "connect failed", record)
    assert record.upstream_down == "http://b:2"
    assert [pool.pick() for _ in range(4)] == [c, a, c, a]
    assert pool.pick(instead_of=a) is c
    for upstream in (a, c):
        pool.failed(upstream, "connect failed", record)
        pool.failed(upstream, "connect failed", record)
    assert pool.pick() is not None  # every url cooling down: one is tried anyway
    pool.succeeded(b, record)
    assert record.upstream_up == "http://b:2"
    assert [pool.pick() for _ in range(3)] == [b] * 3
    # A retry keeps the scheme: the upstream connection's TLS (or not) is already decided.
    mixed = parse_service_endpoint(
        "mixed", {"urls": ["http://a:1", "https://b:2", "http://c:3"]}, KeyPath("serviceEndpoints.mixed")
    )
    pool = UpstreamPool(mixed)
    assert {pool.pick(instead_of=mixed.upstreams[0]) for _ in range(4)} == {mixed.upstreams[2]}
    assert UpstreamPool(mixed).pick(instead_of=mixed.upstreams[1]) is None
