"""Request limits (``limits``): oversized heads get 431, oversized bodies 413, slow heads 408 (#7).

Each through a running gateway: the upstream never sees a refused request, the gateway does not
hold what it refuses in memory, and other clients are served meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import one_pipeline
from harness import exchange, rss_bytes, send, wait_until
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import StepState

PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"
LIMITS = (
    "limits: {maxHeaderBytes: 2kb, maxBodyBytes: 1mb, maxBufferedBodyBytes: 512kb, headersTimeoutMs: 600}\n"
)


@pytest.fixture(params=["mitmdump", "mitmgateway"])
def limited(start_gateway, upstreams, request):
    return start_gateway(one_pipeline(upstreams["orders"].url, PROXY, extra=LIMITS), runner=request.param)


def served(gateway) -> int:
    return json.loads(gateway.send("/count").body)["served"]


def chunked(port: int, body: bytes, chunk: int = 64 << 10) -> bytes:
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    parts = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
    return exchange(port, head + b"".join(parts) + b"0\r\n\r\n", timeout=10).data


def test_limits_are_parsed_with_units_and_refused_with_their_key_path(tmp_path: Path):
    base = "http: {port: 8080}\npipelines: {}\n"
    (tmp_path / "ok.yml").write_text(base + "limits: {maxHeaderBytes: 8kb, maxBodyBytes: '2 MB'}\n")
    limits = load_config(tmp_path / "ok.yml", StepState(), {}).limits
    assert (limits.max_header_bytes, limits.max_body_bytes) == (8192, 2 << 20)
    assert limits.headers_timeout_ms == 60_000  # Node's headersTimeout, so Express Gateway's
    for wrong, reason in [
        ("{maxBodyBytes: 1.5mb}", "limits.maxBodyBytes: must be a size such as 16384, '16kb' or '10mb'"),
        ("{headersTimeout: 3}", "limits.headersTimeout: unknown key"),
    ]:
        (tmp_path / "bad.yml").write_text(base + f"limits: {wrong}\n")
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "bad.yml", StepState(), {})
        assert reason in str(info.value)


def test_oversized_headers_get_431_and_never_reach_the_upstream(limited):
    before = served(limited)
    assert limited.send("/", headers={"X-Big": "a" * 3000}).status == 431
    assert limited.send("/", headers={"X-Ok": "a" * 1000}).status == 200
    assert served(limited) == before + 2  # the 200 and this count, not the 431


def test_a_head_that_never_ends_is_cut_off_at_the_limit(limited):
    # No blank line ever comes: mitmproxy alone would buffer this for as long as it is sent.
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            conn.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert conn.recv(65536) == b""  # and closed: nothing more is read from this client
    assert limited.send("/").status == 200


def test_a_declared_body_over_the_limit_gets_413_without_being_forwarded(limited):
    before = served(limited)
    reply = limited.send("/upload", method="POST", body=b"x" * (1 << 20) + b"x")
    assert (reply.status, reply.text) == (413, "Payload Too Large")
    assert served(limited) == before + 1
    # Over maxBufferedBodyBytes but within maxBodyBytes, with its length known: it streams.
    body = os.urandom(700 << 10)
    echoed = json.loads(limited.send("/upload", method="POST", body=body).body)
    assert echoed["bodySha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_body_is_measured_as_it_comes(limited):
    body = os.urandom(700 << 10)  # over maxBufferedBodyBytes: a body of unknown length is held
    assert chunked(limited.port, body).startswith(b"HTTP/1.1 413 ")
    small = os.urandom(300 << 10)
    answer = chunked(limited.port, small)
    assert answer.startswith(b"HTTP/1.1 200 ")
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert echoed["bodySha256"] == hashlib.sha256(small).hexdigest()


def test_without_limits_a_chunked_body_streams_through_whole(start_gateway, upstreams):
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, PROXY))
    body = os.urandom(3 << 20)
    answer = chunked(gateway.port, body)
    echoed = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert echoed["bodySha256"] == hashlib.sha256(body).hexdigest()


def test_a_refused_request_body_is_not_held_in_memory(start_gateway, upstreams, rsa_keys):
    jwt = f"{{action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false}}}}"
    steps = f"- jwt: [{jwt}]\n{PROXY}"
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, steps))
    gateway.send("/")  # everything imported and warmed up
    before = rss_bytes(gateway.process.pid)
    reply = gateway.send("/upload", method="POST", body=os.urandom(96 << 20))
    assert reply.status == 401
    assert rss_bytes(gateway.process.pid) - before < 48 << 20


def test_a_client_expecting_100_continue_is_not_invited_to_send_a_refused_body(
    start_gateway, upstreams, rsa_keys
):
    jwt = f"{{action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false}}}}"
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, f"- jwt: [{jwt}]\n{PROXY}"))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=1) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        with pytest.raises(TimeoutError):
            conn.recv(4096)  # no "100 Continue": the answer is already 401
        conn.sendall(b"hello")
        assert conn.recv(4096).startswith(b"HTTP/1.1 401 ")


def test_slow_clients_get_408_and_do_not_starve_others(limited):
    slow = [socket.create_connection(("127.0.0.1", limited.port), timeout=5) for _ in range(50)]
    stop = threading.Event()

    def trickle() -> None:
        # slowloris: a header byte now and then, the head never finished in time
        while not stop.is_set():
            for conn in slow:
                with contextlib.suppress(OSError):
                    conn.send(b"X")
            time.sleep(0.1)

    for conn in slow:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    quiet = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    quiet.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing at all
    worker = threading.Thread(target=trickle)
    worker.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            assert send(limited.port, "/").status == 200
        assert quiet.recv(4096).startswith(b"HTTP/1.1 408 ")
        answers = [conn.recv(4096) for conn in slow]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
    finally:
        stop.set()
        worker.join()
        for conn in [*slow, quiet]:
            conn.close()
    assert wait_until(lambda: send(limited.port, "/").status == 200)


def test_a_connection_that_never_sends_a_request_is_closed_at_the_headers_timeout(limited):
    # Not an HTTP head at all: a silent client, and bytes mitmproxy takes for the start of a TLS
    # handshake and waits on for ever (the record says 8 KiB follow).
    for opening in (b"", b"\x16\x03\x01 garbage\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as conn:
            conn.sendall(opening)
            started = time.monotonic()
            assert conn.recv(4096) == b""  # closed, not left waiting
            assert time.monotonic() - started < 3
    assert limited.send("/").status == 200
