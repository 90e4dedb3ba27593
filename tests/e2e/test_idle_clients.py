"""Idle keep-alive clients set aside down to their socket and served again when they send
(hooks/idle_clients.py), through a running gateway, with raw client sockets that see whether their
connection stayed the same."""

from __future__ import annotations

import json
import signal
import socket
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_upstream_pool import CountingUpstream

import harness
from certificates import CertificateAuthority
from conftest import one_pipeline
from h2_client import H2Client, client_context, tls_connect
from harness import free_port, wait_for_port, wait_until
from mitmgateway.hooks.idle_clients import CROWD, SET_ASIDE_AFTER_SECONDS, SWEEP_SECONDS

CLIENTS = 300
POOL = "pool: {maxConnections: 10, idleTimeoutMs: 300}"


@pytest.fixture
def upstream():
    server = CountingUpstream()
    yield server
    server.stop()


def start_with_admin(start_gateway, upstream, pool: str = POOL, extra: str = "", **kwargs):  # type: ignore[no-untyped-def]
    admin_port = free_port()
    steps = "- proxy: [{action: {serviceEndpoint: backend}}]"
    config = one_pipeline(upstream.url, steps, extra=f"admin: {{port: {admin_port}}}\n{extra}")
    config = config.replace(f"url: '{upstream.url}'", f"url: '{upstream.url}', {pool}")
    gateway = start_gateway(config, **kwargs)
    gateway.admin_port = admin_port
    return gateway


@pytest.fixture
def gateway(start_gateway, upstream):  # type: ignore[no-untyped-def]
    return start_with_admin(start_gateway, upstream)


def request(request_id: str, path: str = "/x", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: api\r\nX-Request-Id: {request_id}\r\n{extra}\r\n".encode()


_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()
"""What a connection received past the answer read last (the next of two pipelined answers)."""


def read_answer(conn: socket.socket, another_follows: bool = False) -> tuple[int, str | None]:
    """One HTTP/1.1 answer with a Content-Length: (status, the id the upstream echoed). Bytes past
    it are kept for the next call if `another_follows`, and fail the test otherwise."""
    data = _unread.pop(conn, b"")
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "closed in the body"
        body += chunk
    body, past = body[:length], body[length:]
    if another_follows:
        _unread[conn] = past
    else:
        assert not past, f"nothing past the answer: {past!r}"
    status = int(lines[0].split()[1])
    return status, json.loads(body)["id"] if status == 200 else None


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def client_connections(gateway) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    return harness.client_connections(gateway.admin_port)


def wait_resting(gateway, count: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(live, resting) once `count` clients rest; False if they do not in time."""
    return wait_until(
        lambda: (c := client_connections(gateway))[1] == count and c, timeout=SET_ASIDE_AFTER_SECONDS + 8
    )


def resting_client(gateway) -> socket.socket:  # type: ignore[no-untyped-def]
    """A client connection that made one request and was then set aside."""
    conn = connect(gateway.port)
    conn.sendall(request("one"))
    assert read_answer(conn) == (200, "one")
    assert wait_resting(gateway, 1)
    return conn


@pytest.mark.parametrize("runner", ["mitmdump", "mitmweb", "mitmgateway"])
def test_an_idle_client_is_set_aside_and_its_next_request_is_served_on_the_same_connection(
    start_gateway, upstream, runner
):
    gateway = start_with_admin(start_gateway, upstream, runner=runner)
    conn = connect(gateway.port)
    try:
        local = conn.getsockname()
        conn.sendall(request("one"))
        assert read_answer(conn) == (200, "one")
        assert wait_resting(gateway, 1) == (0, 1)
        conn.sendall(request("two"))
        assert read_answer(conn) == (200, "two")
        # The same TCP connection throughout, live again.
        assert conn.getsockname() == local
        assert wait_until(lambda: client_connections(gateway) == (1, 0))
    finally:
        conn.close()


def test_many_idle_clients_rest_and_each_next_answer_is_its_own(gateway, upstream):
    conns = [connect(gateway.port) for _ in range(CLIENTS)]

    def exchange(i: int, label: str) -> tuple[int, str | None]:
        conns[i].sendall(request(f"{label}-{i}"))
        return read_answer(conns[i])

    try:
        with ThreadPoolExecutor(30) as pool:
            assert list(pool.map(lambda i: exchange(i, "first"), range(CLIENTS))) == [
                (200, f"first-{i}") for i in range(CLIENTS)
            ]
        assert wait_resting(gateway, CLIENTS) == (0, CLIENTS)
        # Set aside, they hold no upstream connection either.
        assert wait_until(lambda: upstream.open == 0, timeout=5), upstream.open
        with ThreadPoolExecutor(30) as pool:
            assert list(pool.map(lambda i: exchange(i, "second"), range(CLIENTS))) == [
                (200, f"second-{i}") for i in range(CLIENTS)
            ]
        assert upstream.peak <= 12, upstream.peak
    finally:
        for conn in conns:
            conn.close()


def test_in_a_crowd_an_idle_client_rests_sooner_and_tls_and_http2_clients_stay_live(
    start_gateway, upstream, tmp_path
):
    # The crowd: TLS clients, over HTTP/1.1 and one over HTTP/2, which are never set aside (their
    # session lives in mitmproxy's layers).
    ca = CertificateAuthority(tmp_path)
    issued = ca.issue("gateway", "api.test")
    https_port = free_port()
    https = (
        f"https:\n  port: {https_port}\n  hostname: 127.0.0.1\n  tls:\n"
        f"    default: {{key: {issued.key_file}, cert: {issued.cert_file}}}\n"
    )
    gateway = start_with_admin(start_gateway, upstream, extra=https)
    wait_for_port(https_port, gateway.process, gateway.log_path)
    tls_clients = CROWD

    def tls_client(i: int) -> socket.socket:
        conn = tls_connect(https_port, "api.test", client_context(ca.cert_file))
        conn.sendall(request(f"tls-{i}"))
        assert read_answer(conn) == (200, f"tls-{i}")
        return conn

    with ThreadPoolExecutor(30) as pool:
        conns = list(pool.map(tls_client, range(tls_clients)))
    h2 = tls_connect(https_port, "api.test", client_context(ca.cert_file, alpn=["h2"]))
    plain = connect(gateway.port)
    conns += [h2, plain]
    try:
        assert H2Client(h2).get("api.test", "/h2")[0][b":status"] == b"200"
        plain.sendall(request("plain"))
        assert read_answer(plain) == (200, "plain")
        # More than CROWD live: the plain client rests before it has been idle the usual time.
        assert wait_until(lambda: client_connections(gateway)[1] == 1, timeout=SET_ASIDE_AFTER_SECONDS - 0.3)
        # Idle well past that time, the TLS and HTTP/2 clients are still live, and the plain one
        # still rests (the crowd is live, not resting).
        time.sleep(SET_ASIDE_AFTER_SECONDS + 2 * SWEEP_SECONDS)
        assert client_connections(gateway) == (tls_clients + 1, 1)
        plain.sendall(request("plain-again"))
        assert read_answer(plain) == (200, "plain-again")
        conns[0].sendall(request("tls-again"))
        assert read_answer(conns[0]) == (200, "tls-again")
    finally:
        for conn in conns:
            conn.close()


def test_a_resting_client_that_closes_is_let_go(gateway):
    conn = resting_client(gateway)
    conn.close()
    assert wait_until(lambda: client_connections(gateway) == (0, 0), timeout=3)
    assert "Traceback" not in gateway.log()


def test_what_a_resting_client_sends_is_read_from_its_first_byte(gateway):
    conn = resting_client(gateway)
    try:
        # A head in two pieces, the first alone long enough to wake the connection.
        second = request("two")
        conn.sendall(second[:7])
        time.sleep(0.3)
        conn.sendall(second[7:])
        assert read_answer(conn) == (200, "two")
        assert wait_resting(gateway, 1)
        # Two requests at once: both answered, in order.
        conn.sendall(request("three") + request("four"))
        assert read_answer(conn, another_follows=True) == (200, "three")
        assert read_answer(conn) == (200, "four")
        assert wait_resting(gateway, 1)
        # What a new connection would be refused for, a resting one is refused for.
        conn.sendall(b"GET /x HTTP/1.1\r\nHost: api\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        assert conn.recv(65536).startswith(b"HTTP/1.1 400")
    finally:
        conn.close()


def test_a_woken_client_gets_headers_timeout_ms_for_its_head_as_a_new_connection_does(
    start_gateway, upstream
):
    gateway = start_with_admin(start_gateway, upstream, extra="limits: {headersTimeoutMs: 600}\n")
    conn = resting_client(gateway)
    try:
        conn.sendall(b"GET /x HTTP/1.1\r\nHost: api\r\n")  # and no more of the head
        conn.settimeout(10)
        answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert upstream.accepted == 1, "the first request's connection only"
    finally:
        conn.close()


def test_a_code_reload_hands_resting_clients_over_and_lets_go_of_older_upstream_connections(
    start_gateway, upstream
):
    pool = "pool: {maxConnections: 10, idleTimeoutMs: 60000}"
    gateway = start_with_admin(start_gateway, upstream, pool=pool)
    conn = resting_client(gateway)
    # A client busy while the code changes: its upstream connection, opened before, is one the
    # next code's pools do not know.
    live = connect(gateway.port)
    try:
        module = Path(__file__).resolve().parents[2] / "addons/mitmgateway/hooks/idle_clients.py"
        module.touch()
        sent = 0
        while gateway.log().count("Loading script") < 2:
            assert sent < 60, gateway.log()
            live.sendall(request(f"busy-{sent}"))
            assert read_answer(live) == (200, f"busy-{sent}")
            sent += 1
            time.sleep(0.2)
        live.sendall(request("after"))
        assert read_answer(live) == (200, "after")
        # The next code's addon took the resting socket over as it was, and sets the busy client
        # aside once idle: its older upstream connection closes with it (the resting client's
        # parked one closed with the previous code's pools).
        assert wait_resting(gateway, 2) == (0, 2)
        assert wait_until(lambda: upstream.open == 0), upstream.open
        conn.sendall(request("two"))
        assert read_answer(conn) == (200, "two")
        live.sendall(request("three"))
        assert read_answer(live) == (200, "three")
    finally:
        conn.close()
        live.close()


def test_sigterm_closes_resting_clients_and_exits(gateway):
    conn = resting_client(gateway)
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=10) == 0
    conn.settimeout(5)
    assert conn.recv(1) == b""
    conn.close()


def test_a_client_whose_upstream_connection_could_not_be_pooled_keeps_it_until_the_idle_timeout(
    start_gateway, upstream
):
    # An NTLM login authenticates the upstream connection itself: it cannot go to another client,
    # and setting the client aside would close it, so the client's next request would start a
    # login the upstream never saw. The client is set aside once the pool's idle timeout closed it.
    pool = "pool: {maxConnections: 10, idleTimeoutMs: 5000}"
    gateway = start_with_admin(start_gateway, upstream, pool=pool)
    conn = connect(gateway.port)
    try:
        for label in ("one", "two"):
            conn.sendall(request(label, extra="Authorization: NTLM TlRMTVNTUAABAAAA\r\n"))
            assert read_answer(conn) == (200, label)
            time.sleep(SET_ASIDE_AFTER_SECONDS + 1)
            assert client_connections(gateway) == (1, 0)
        assert upstream.accepted == 1, "both requests on the connection the login was on"
        assert wait_resting(gateway, 1) == (0, 1)
        assert upstream.open == 0
    finally:
        conn.close()
