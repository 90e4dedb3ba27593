"""Upstream connections bounded per address, passed from client to client, and closed when idle
(a serviceEndpoint's ``pool``), through a running gateway and an upstream that counts the
connections it accepts and holds."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest

from certificates import CertificateAuthority
from conftest import one_pipeline
from harness import LocalServer, RawServer, answer_json, client_connections, free_port, wait_until
from mitmgateway.hooks.idle_clients import SET_ASIDE_AFTER_SECONDS

CLIENTS = 500
POOL = "pool: {maxConnections: 10, idleTimeoutMs: 300}"
# The upstream counts a connection until its thread reads the close, which may come just after it
# accepted the gateway's next one: what it sees can exceed the bound by a connection in closing.
SEEN_AT_MOST = 10 + 2
SLOW_SECONDS = 0.8


class CountingUpstream(LocalServer):
    """HTTP/1.1 with keep-alive; counts the connections open now and the most ever open at once;
    answers each request with its X-Request-Id (``/slow``: after SLOW_SECONDS). With
    `keep_alive_seconds`, it closes a connection idle that long itself (as Node does after 5 s)."""

    def __init__(self, keep_alive_seconds: float | None = None) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.keep_alive_seconds = keep_alive_seconds
        self._lock = threading.Lock()
        self.start()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = owner.keep_alive_seconds

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner.open += 1
                    owner.accepted += 1
                    owner.peak = max(owner.peak, owner.open)

            def finish(self) -> None:
                with owner._lock:
                    owner.open -= 1
                super().finish()

            def do_GET(self) -> None:
                if self.path == "/slow":
                    time.sleep(SLOW_SECONDS)
                answer_json(self, {"id": self.headers.get("X-Request-Id")})

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def pool_config(upstream: CountingUpstream, pool: str = POOL) -> str:
    """One pipeline to `upstream` with `pool`; over TLS, with its CA as the caFile."""
    config = one_pipeline(upstream.url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    if isinstance(upstream, TlsCountingUpstream):
        pool += f", proxyOptions: {{target: {{caFile: {upstream.ca.cert_file}}}}}"
    return config.replace(f"url: '{upstream.url}'", f"url: '{upstream.url}', {pool}")


def gateway_with_pool(start_gateway, upstream: CountingUpstream, pool: str = POOL):  # type: ignore[no-untyped-def]
    return start_gateway(pool_config(upstream, pool))


def ask(conn: http.client.HTTPConnection, request_id: str, path: str = "/x") -> tuple[int, str | None]:
    conn.request("GET", path, headers={"X-Request-Id": request_id})
    response = conn.getresponse()
    body = response.read()
    return response.status, json.loads(body)["id"] if response.status == 200 else None


@pytest.fixture
def upstream():
    server = CountingUpstream()
    yield server
    server.stop()


def test_idle_clients_hold_no_more_upstream_connections_than_the_pool(start_gateway, upstream):
    gateway = gateway_with_pool(start_gateway, upstream)
    clients = [http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30) for _ in range(CLIENTS)]
    try:
        with ThreadPoolExecutor(50) as pool:
            first = list(pool.map(lambda i: ask(clients[i], f"first-{i}"), range(CLIENTS)))
        # Every answer is its own request's: none went to another client.
        assert first == [(200, f"first-{i}") for i in range(CLIENTS)]
        assert upstream.peak <= SEEN_AT_MOST, upstream.peak
        # Past the bound, a request takes the socket of a client idle the longest: the 500
        # clients' requests went over about as many connections as the pool allows.
        assert upstream.accepted <= SEEN_AT_MOST, upstream.accepted
        # The 500 clients stay connected, idle: their upstream connections are let go.
        assert wait_until(lambda: upstream.open == 0, timeout=5), upstream.open
        with ThreadPoolExecutor(50) as pool:
            second = list(pool.map(lambda i: ask(clients[i], f"second-{i}"), range(CLIENTS)))
        assert second == [(200, f"second-{i}") for i in range(CLIENTS)]
        assert upstream.peak <= SEEN_AT_MOST, upstream.peak
    finally:
        for conn in clients:
            conn.close()


def ask_once(port: int, request_id: str, path: str = "/x") -> tuple[int, str | None]:
    """One request on a connection of its own, closed after."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return ask(conn, request_id, path)
    finally:
        conn.close()


@pytest.fixture(params=["http", "https"])
def plain_or_tls_upstream(request, tmp_path):
    server = (
        CountingUpstream() if request.param == "http" else TlsCountingUpstream(CertificateAuthority(tmp_path))
    )
    yield server
    server.stop()


def test_a_new_client_connection_per_request_reuses_the_upstream_connections(
    start_gateway, plain_or_tls_upstream
):
    # Over TLS, the session goes with the socket: one handshake serves one client after another.
    upstream = plain_or_tls_upstream
    gateway = gateway_with_pool(start_gateway, upstream, "pool: {idleTimeoutMs: 2000}")
    one_after_another = [ask_once(gateway.port, f"seq-{i}") for i in range(30)]
    assert one_after_another == [(200, f"seq-{i}") for i in range(30)]
    # A client's close reaches the gateway before the next client's request needs a connection
    # (but for a rare race): each takes the socket the one before it left.
    assert upstream.accepted <= 3, upstream.accepted
    before = upstream.accepted
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: ask_once(gateway.port, f"par-{i}"), range(400)))
    # Every answer is its own request's, though its connection served other clients before.
    assert answers == [(200, f"par-{i}") for i in range(400)]
    assert upstream.accepted - before <= 20 + 10, upstream.accepted - before


def test_an_upstream_connection_cut_off_mid_request_goes_to_no_other_client(start_gateway, upstream):
    gateway = gateway_with_pool(start_gateway, upstream, "pool: {idleTimeoutMs: 5000}")
    assert ask_once(gateway.port, "warm") == (200, "warm")  # one socket parked
    cut = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    cut.request("GET", "/slow", headers={"X-Request-Id": "cut-off"})
    time.sleep(SLOW_SECONDS / 4)
    cut.close()  # the gateway's upstream connection still awaits the slow answer
    time.sleep(SLOW_SECONDS / 4)
    accepted = upstream.accepted
    # Requests now and once the slow answer has come: none of them is answered with it.
    assert ask_once(gateway.port, "next") == (200, "next")
    time.sleep(SLOW_SECONDS)
    assert [ask_once(gateway.port, f"later-{i}") for i in range(3)] == [(200, f"later-{i}") for i in range(3)]
    assert upstream.accepted == accepted + 1, "the cut-off connection was not passed on"


def test_an_upstream_that_closes_idle_connections_fails_no_request(start_gateway):
    # It lets go after 0.2 s, before the gateway's own idle timeout (1 s): requests 0.25 s apart
    # each find their connection closed by the upstream.
    upstream = CountingUpstream(keep_alive_seconds=0.2)
    try:
        gateway = gateway_with_pool(start_gateway, upstream, "pool: {idleTimeoutMs: 1000}")
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        for i in range(8):
            assert ask(conn, f"r{i}") == (200, f"r{i}")
            threading.Event().wait(0.25)
        assert upstream.accepted >= 4, "the upstream did close idle connections"
        conn.close()
        # The same with a new client connection each time: a parked socket the upstream closed
        # is never handed to the next client.
        accepted = upstream.accepted
        for i in range(8):
            assert ask_once(gateway.port, f"n{i}") == (200, f"n{i}")
            threading.Event().wait(0.25)
        assert upstream.accepted >= accepted + 4, "the upstream did close parked connections"
    finally:
        upstream.stop()


def test_a_pool_setting_that_makes_no_sense_is_refused(tmp_path):
    from mitmgateway.config.assemble import load_config
    from mitmgateway.config.errors import ConfigError
    from mitmgateway.policies import StepState

    config = tmp_path / "gateway.config.yml"
    text = one_pipeline("http://127.0.0.1:9", "- proxy: [{action: {serviceEndpoint: backend}}]")
    config.write_text(
        text.replace("{port}", "8080").replace(
            "url: 'http://127.0.0.1:9'", "url: 'http://127.0.0.1:9', pool: {maxConnections: 0}"
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, StepState())
    assert "serviceEndpoints.backend.pool.maxConnections" in str(info.value)


class ExchangeThatGoesOn(RawServer):
    """An upstream whose answer goes on past the point mitmproxy takes it to end: to a GET, a
    ``103 Early Hints`` (complete as far as mitmproxy reads it) and the final 200 later; to a
    HEAD, a head announcing a body, and those bytes after it. The late bytes name the request's
    path: on any connection they reach, they read as an answer to that request."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0

    def answer(self, conn: socket.socket) -> None:
        self.accepted += 1
        buffered = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                late = b"late answer to " + path
                length = b"Content-Length: %d\r\n\r\n" % len(late)
                if method == b"HEAD":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + length)
                    time.sleep(0.4)
                    conn.sendall(late)
                else:
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                    time.sleep(0.4)
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + late)


def read_for(port: int, method: str, path: str, seconds: float) -> bytes:
    """What the gateway sends back to one request within `seconds`, on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        conn.settimeout(0.05)
        received, deadline = b"", time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            received += data
        return received


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("pool", ["pool: {idleTimeoutMs: 3000}", "pool: {maxConnections: 1}"])
def test_an_upstream_answer_that_goes_on_past_its_end_reaches_no_other_client(start_gateway, method, pool):
    # Client A's exchange looks complete to mitmproxy (a 1xx, a HEAD's head) while its upstream
    # still has bytes to send; A leaves, or stays connected while B waits for the only connection.
    # Either way its connection must not pass to B, who would read A's late bytes as its answer.
    upstream = ExchangeThatGoesOn()
    try:
        config = one_pipeline(upstream.url, "- proxy: [{action: {serviceEndpoint: backend}}]")
        gateway = start_gateway(config.replace(f"url: '{upstream.url}'", f"url: '{upstream.url}', {pool}"))
        answers: dict[str, bytes] = {}
        a = threading.Thread(
            target=lambda: answers.update(a=read_for(gateway.port, method, "/a-secret", 0.15))
        )
        a.start()
        # B only once A's request has its connection (a thread may start late on a busy machine,
        # and B's request would then take the only connection first).
        assert wait_until(lambda: upstream.accepted == 1, interval=0.005)
        answers["b"] = read_for(gateway.port, "GET", "/b", 1.5)
        a.join()
        assert b"a-secret" not in answers["b"], answers["b"]
        assert upstream.accepted == 2, "A's connection went to no one"
    finally:
        upstream.stop()


class TlsCountingUpstream(CountingUpstream):
    """CountingUpstream over TLS, with a certificate for 127.0.0.1 from `ca`: each connection it
    accepts is one TLS handshake."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        issued = ca.issue("upstream", "127.0.0.1")
        self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_context.load_cert_chain(issued.cert_file, issued.key_file)
        super().__init__()


@pytest.fixture
def tls_upstream(tmp_path):
    ca = CertificateAuthority(tmp_path)
    server = TlsCountingUpstream(ca)
    yield server
    server.stop()


def test_a_client_holding_a_tls_session_is_set_aside_when_idle_and_the_session_parked(
    start_gateway, tls_upstream
):
    admin_port = free_port()
    config = pool_config(tls_upstream, "pool: {idleTimeoutMs: 60000}") + f"admin: {{port: {admin_port}}}\n"
    gateway = start_gateway(config)
    keeping = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        assert ask(keeping, "kept-1") == (200, "kept-1")
        # Long before the pool's idle timeout would close its upstream connection.
        assert wait_until(lambda: client_connections(admin_port)[1] == 1, timeout=SET_ASIDE_AFTER_SECONDS + 5)
        assert ask_once(gateway.port, "other") == (200, "other")
        assert ask(keeping, "kept-2") == (200, "kept-2")
        assert tls_upstream.accepted == 1
    finally:
        keeping.close()


def test_a_tls_session_verified_under_an_earlier_config_is_not_passed_on(start_gateway, tls_upstream):
    gateway = gateway_with_pool(start_gateway, tls_upstream, "pool: {idleTimeoutMs: 5000}")
    assert ask_once(gateway.port, "before") == (200, "before")
    assert ask_once(gateway.port, "before-again") == (200, "before-again")
    assert tls_upstream.accepted == 1
    # What verifies the upstream may have changed with the config (its caFile): the next
    # connection makes its own handshake.
    gateway.config.write_text(
        pool_config(tls_upstream, "pool: {idleTimeoutMs: 5001}").replace("{port}", str(gateway.port))
    )
    assert wait_until(lambda: "config reloaded: " in gateway.log())
    assert ask_once(gateway.port, "after") == (200, "after")
    assert tls_upstream.accepted == 2
    assert ask_once(gateway.port, "after-again") == (200, "after-again")
    assert tls_upstream.accepted == 2
