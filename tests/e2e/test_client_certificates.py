"""Client certificates on the https listener (https.options requestCert and rejectUnauthorized,
tls entries' ca) and the tlsClientAuthenticated condition, through a real mitmdump: certificates
made at test time by a CA the config trusts and one it does not."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest

from certificates import CertificateAuthority, Issued
from harness import free_port, wait_for_port

PIPELINE = """\
apiEndpoints: {{api: {{host: '*'}}}}
serviceEndpoints: {{backend: {{url: '{upstream}'}}}}
policies: [terminate, headers, proxy]
pipelines:
  api:
    apiEndpoints: [api]
    policies:
      - terminate:
          - condition: {{name: not, condition: {{name: tlsClientAuthenticated}}}}
            action: {{statusCode: 403, message: no verified client certificate}}
      - headers: [{{action: {{forwardHeaders: {{X-Client-CN: req.client.subject.CN}}}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.fixture
def pki(tmp_path: Path) -> SimpleNamespace:
    trusted, other = CertificateAuthority(tmp_path), CertificateAuthority(tmp_path, "another CA")
    return SimpleNamespace(
        ca=trusted,
        server=trusted.issue("server", "api.example.test"),
        device=trusted.issue("device", "device-7", client=True),
        stranger=other.issue("stranger", "device-8", client=True),
        self_signed=trusted.issue("self", "device-9", self_signed=True, client=True),
        # Issued by the trusted CA, but for a server: not a client's certificate.
        server_only=trusted.issue("server-only", "device-10"),
    )


@pytest.fixture
def start_mtls_gateway(start_gateway, upstreams, pki):
    def start(options: str):
        https_port = free_port()
        config = (
            "http: {port: {port}, hostname: 127.0.0.1}\n"
            f"https:\n  port: {https_port}\n  hostname: 127.0.0.1\n  tls:\n"
            f"    default: {{key: {pki.server.key_file.name}, cert: {pki.server.cert_file.name}, "
            f"ca: [{pki.ca.cert_file.name}]}}\n"
            f"  options: {options}\n" + PIPELINE.format(upstream=upstreams["orders"].url)
        )
        gateway = start_gateway(config)
        wait_for_port(https_port, gateway.process, gateway.log_path)
        gateway.https_port = https_port
        return gateway

    return start


def context_for(pki: SimpleNamespace, certificate: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    context.set_alpn_protocols(["http/1.1"])
    if certificate is not None:
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
    return context


def get(port: int, pki: SimpleNamespace, certificate: Issued | None) -> tuple[int, dict]:
    return exchange(port, context_for(pki, certificate))[:2]


def exchange(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[int, dict, ssl.SSLSession | None, bool]:
    """Status, answer, the TLS session (to resume) and whether this one was resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="api.example.test", session=session) as conn:
        conn.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        body = response.read()
        answer = json.loads(body) if response.status == 200 else {"text": body.decode()}
        return response.status, answer, conn.session, conn.session_reused


def test_asked_for_and_not_required_the_condition_tells_a_verified_certificate_apart(start_mtls_gateway, pki):
    gateway = start_mtls_gateway("{requestCert: true, rejectUnauthorized: false}")
    status, echoed = get(gateway.https_port, pki, pki.device)
    assert status == 200
    assert echoed["headers"]["X-Client-CN"] == "device-7", "the subject, for expressions and templates"
    for presented in (None, pki.stranger, pki.self_signed, pki.server_only):
        status, answer = get(gateway.https_port, pki, presented)
        assert (status, answer["text"]) == (403, "no verified client certificate"), presented


def test_required_only_a_verified_certificate_completes_the_handshake(start_mtls_gateway, pki):
    gateway = start_mtls_gateway("{requestCert: true}")  # rejectUnauthorized: Node's default, true
    context = context_for(pki, pki.device)
    status, _, session, _ = exchange(gateway.https_port, context)
    assert status == 200
    # A client that offers to resume its session (browsers, curl) is served on its next
    # connection too (OpenSSL failed that handshake while the context had no session id context).
    assert session is not None
    assert exchange(gateway.https_port, context, session)[0] == 200
    for presented in (None, pki.stranger, pki.self_signed, pki.server_only):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            get(gateway.https_port, pki, presented)
