"""TLS as users deploy it (#7): the https listener with certificates by SNI, HTTP/2 by ALPN, and
config errors of the https section. Through a real mitmdump; certificates made at test time."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization

from certificates import CertificateAuthority
from h2_client import H2Client, client_context, tls_connect
from harness import free_port, send, wait_for_port, wait_until
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import StepState

PROXY_ONLY = """\
policies: [proxy]
apiEndpoints:
  api: {{host: '*.example.test'}}
serviceEndpoints:
  backend: {{url: '{upstream}'}}
pipelines:
  api:
    apiEndpoints: [api]
    policies:
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.fixture
def pki(tmp_path: Path) -> SimpleNamespace:
    """A test CA and the gateway's certificates, beside the config file (named relative to it)."""
    ca = CertificateAuthority(tmp_path)
    return SimpleNamespace(
        ca=ca,
        api=ca.issue("api", "api.example.test"),
        wild=ca.issue("wild", "*.wild.example.test"),
        default=ca.issue("default", "default.example.test"),
    )


def tls_section(pki: SimpleNamespace, port: int, *, default: bool = True) -> str:
    entries = {"api.example.test": pki.api, "'*.wild.example.test'": pki.wild}
    if default:
        entries["default"] = pki.default
    lines = [f"https:\n  port: {port}\n  hostname: 127.0.0.1\n  tls:"]
    for name, issued in entries.items():
        # Relative paths: resolved against the config file's folder.
        lines.append(f"    {name}: {{key: {issued.key_file.name}, cert: {issued.cert_file.name}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def start_tls_gateway(start_gateway, upstreams, pki):
    def start(*, default: bool = True, http2: bool = True, runner: str = "mitmdump"):
        https_port = free_port()
        config = (
            "http: {port: {port}, hostname: 127.0.0.1}\n"
            + tls_section(pki, https_port, default=default)
            + PROXY_ONLY.format(upstream=upstreams["orders"].url)
        )
        gateway = start_gateway(config, options=() if http2 else ("http2=false",), runner=runner)
        wait_for_port(https_port, gateway.process, gateway.log_path)
        gateway.https_port = https_port
        return gateway

    return start


def presented_certificate(port: int, server_name: str | None) -> bytes:
    with tls_connect(port, server_name, client_context()) as conn:
        certificate = conn.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate


def https_get(port: int, host: str, path: str, cafile: Path | None) -> tuple[int, bytes]:
    with tls_connect(port, host, client_context(cafile, ["http/1.1"])) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        return response.status, response.read()


def test_sni_picks_the_configured_certificate(start_tls_gateway, pki):
    gateway = start_tls_gateway()
    port = gateway.https_port
    assert presented_certificate(port, "api.example.test") == pki.api.der
    assert presented_certificate(port, "API.EXAMPLE.TEST") == pki.api.der
    assert presented_certificate(port, "x.wild.example.test") == pki.wild.der
    assert presented_certificate(port, "unknown.example.test") == pki.default.der
    assert presented_certificate(port, None) == pki.default.der


def test_requests_over_tls_go_through_the_pipeline(start_tls_gateway, pki):
    gateway = start_tls_gateway()
    status, body = https_get(gateway.https_port, "api.example.test", "/orders/1", pki.ca.cert_file)
    assert status == 200
    echoed = json.loads(body)
    assert echoed["path"] == "/orders/1"
    assert echoed["headers"]["X-Forwarded-Proto"] == "https"
    # Routing is by Host as on the http port: no apiEndpoint for this host.
    status, _ = https_get(gateway.https_port, "nowhere.test", "/", None)
    assert status == 404


# mitmdump runs script addons before its TlsConfig, the lean runner after it: both are covered.
@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_without_default_an_unknown_name_is_refused_not_given_a_minted_certificate(
    start_tls_gateway, pki, runner
):
    gateway = start_tls_gateway(default=False, runner=runner)
    assert presented_certificate(gateway.https_port, "api.example.test") == pki.api.der
    for name in ("unknown.example.test", None):
        # The handshake ends without a certificate. (mitmproxy closes a failed handshake without
        # flushing OpenSSL's alert, so the client sees the connection end rather than the alert.)
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            presented_certificate(gateway.https_port, name)
    assert "https.tls has no certificate for unknown.example.test" in gateway.log()


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_the_http_port_does_not_terminate_tls(start_tls_gateway, pki, runner):
    gateway = start_tls_gateway(runner=runner)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        presented_certificate(gateway.port, "api.example.test")
    assert "TLS on the plain http port" in gateway.log()
    assert gateway.send("/x", host="api.example.test").status == 200


def test_plain_http_on_the_https_port_is_answered_400(start_tls_gateway):
    gateway = start_tls_gateway()
    answer = send(gateway.https_port, "/x", host="api.example.test")
    assert answer.status == 400
    assert answer.text == "This port speaks HTTPS."


def test_http2_is_negotiated_by_alpn_with_an_http1_upstream(start_tls_gateway, pki):
    gateway = start_tls_gateway()
    context = client_context(pki.ca.cert_file, ["h2", "http/1.1"])
    with tls_connect(gateway.https_port, "api.example.test", context) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        client = H2Client(conn)
        headers, body = client.get("api.example.test", "/h2/one")
        assert headers[b":status"] == b"200"
        echoed = json.loads(body)
        assert echoed["path"] == "/h2/one"
        assert echoed["headers"]["X-Forwarded-Proto"] == "https"
        # A second request on the same connection (another stream) is routed the same way.
        headers, body = client.get("nowhere.test", "/h2/two")
        assert headers[b":status"] == b"404"


def test_an_http2_upload_without_content_length_reaches_an_http1_upstream_whole(start_tls_gateway, pki):
    gateway = start_tls_gateway()
    body = os.urandom(3 << 20)
    with tls_connect(
        gateway.https_port, "api.example.test", client_context(pki.ca.cert_file, ["h2"])
    ) as conn:
        headers, answer = H2Client(conn).post("api.example.test", "/upload", body)
    assert headers[b":status"] == b"200"
    echoed = json.loads(answer)
    assert echoed["bodySha256"] == hashlib.sha256(body).hexdigest()
    # mitmproxy alone sends it without framing, and the upstream takes it for an empty body.
    assert echoed["headers"]["content-length"] == str(len(body))


def test_http2_can_be_turned_off(start_tls_gateway, pki):
    gateway = start_tls_gateway(http2=False)
    context = client_context(pki.ca.cert_file, ["h2", "http/1.1"])
    with tls_connect(gateway.https_port, "api.example.test", context) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"


def test_a_renewed_certificate_is_served_after_the_reload(start_tls_gateway, pki):
    gateway = start_tls_gateway()
    assert presented_certificate(gateway.https_port, "api.example.test") == pki.api.der
    renewed = pki.ca.issue("api", "api.example.test")  # same files, as certbot renews them
    assert renewed.der != pki.api.der
    assert wait_until(lambda: presented_certificate(gateway.https_port, "api.example.test") == renewed.der)
    status, _ = https_get(gateway.https_port, "api.example.test", "/", pki.ca.cert_file)
    assert status == 200


# Config errors of the https section: each names its key path.


def write_config(tmp_path: Path, https: str) -> Path:
    path = tmp_path / "gateway.config.yml"
    path.write_text("http: {port: 8080}\n" + https + PROXY_ONLY.format(upstream="http://127.0.0.1:9001"))
    return path


def config_error(tmp_path: Path, https: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, https), StepState(), {})
    return str(info.value)


def test_a_valid_https_section_builds(tmp_path, pki):
    config = load_config(write_config(tmp_path, tls_section(pki, 8443)), StepState(), {})
    assert config.https is not None and config.https.port == 8443
    assert config.https.names == ("api.example.test", "*.wild.example.test", "default")
    # Renewing a certificate file reloads the config.
    assert pki.api.cert_file in config.watched_files


def test_https_alone_is_enough(tmp_path, pki):
    path = tmp_path / "gateway.config.yml"
    path.write_text(tls_section(pki, 8443) + PROXY_ONLY.format(upstream="http://127.0.0.1:9001"))
    config = load_config(path, StepState(), {})
    assert config.http is None and config.https is not None


@pytest.mark.parametrize(
    ("https", "message"),
    [
        (
            "https: {port: 8443, tls: {api.example.test: {key: missing.pem, cert: api.cert.pem}}}\n",
            "https.tls.api.example.test.key: cannot read {dir}/missing.pem: No such file or directory",
        ),
        (
            "https: {port: 8443, tls: {api.example.test: {key: api.key.pem, cert: api.key.pem}}}\n",
            "https.tls.api.example.test.cert: {dir}/api.key.pem holds no PEM certificate",
        ),
        (
            "https: {port: 8443, tls: {api.example.test: {key: api.cert.pem, cert: api.cert.pem}}}\n",
            "https.tls.api.example.test.key: {dir}/api.cert.pem holds no PEM private key",
        ),
        (
            "https: {port: 8443, tls: {api.example.test: {key: wild.key.pem, cert: api.cert.pem}}}\n",
            "https.tls.api.example.test.cert: {dir}/api.cert.pem is not the certificate of the key in "
            "{dir}/wild.key.pem",
        ),
        (
            "https: {port: 8443, tls: {api.example.test: {key: api.key.pem}}}\n",
            "https.tls.api.example.test.cert: is required",
        ),
        (
            "https: {port: 8443, tls: {'bad name!': {key: api.key.pem, cert: api.cert.pem}}}\n",
            "https.tls.bad name!: must be a host name, a wildcard like *.example.com, or default",
        ),
        ("https: {port: 8443, tls: {}}\n", "https.tls: must name at least one certificate"),
        ("https: {port: 8443}\n", "https.tls: must name at least one certificate"),
        ("https: {tls: {}}\n", "https.port: is required"),
        ("https: {port: 8080, tls: {}}\n", "https.tls: must name"),
        (
            "https: {port: 8443, ciphers: x, tls: {}}\n",
            "https.ciphers: unknown key (accepted: port, hostname, tls, options)",
        ),
    ],
)
def test_bad_https_sections_are_refused_by_key_path(tmp_path, pki, https, message):
    assert message.format(dir=tmp_path) in config_error(tmp_path, https)


def test_https_port_must_differ_from_http_port(tmp_path, pki):
    https = "https: {port: 8080, tls: {default: {key: api.key.pem, cert: api.cert.pem}}}\n"
    assert "https.port: is also http.port (8080)" in config_error(tmp_path, https)


def test_an_encrypted_key_is_refused(tmp_path, pki):
    key = serialization.load_pem_private_key(pki.api.key_file.read_bytes(), None)
    (tmp_path / "locked.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    https = "https: {port: 8443, tls: {default: {key: locked.pem, cert: api.cert.pem}}}\n"
    assert "https.tls.default.key: " in config_error(tmp_path, https)
    assert "is encrypted" in config_error(tmp_path, https)


# HTTPS upstreams: verified against certifi's CAs, or the serviceEndpoint's caFile.


class HttpsUpstream:
    """An HTTPS echo service on 127.0.0.1, in a thread of the test process, with `issued`'s
    certificate."""

    def __init__(self, issued) -> None:  # type: ignore[no-untyped-def]
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if "delay=" in self.path:  # ?delay=SECONDS: an upstream too slow to answer
                    time.sleep(float(self.path.rpartition("delay=")[2]))
                body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert_file, issued.key_file)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        serve = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        serve.daemon = True
        serve.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def https_upstreams(pki):
    started = {
        "good": HttpsUpstream(pki.ca.issue("up-good", "127.0.0.1")),
        "selfsigned": HttpsUpstream(pki.ca.issue("up-self", "127.0.0.1", self_signed=True)),
        "wrongname": HttpsUpstream(pki.ca.issue("up-wrong", "other.example.test")),
        "expired": HttpsUpstream(pki.ca.issue("up-expired", "127.0.0.1", expired=True)),
        # Signed by the test CA, which certifi does not hold: its serviceEndpoint has no caFile.
        "certifi": HttpsUpstream(pki.ca.issue("up-certifi", "127.0.0.1")),
    }
    yield started
    for upstream in started.values():
        upstream.stop()


def upstream_tls_config(pki, https_upstreams, https_port: int) -> str:
    """One apiEndpoint per upstream (host NAME.example.test), each with the test CA as caFile but
    `certifi`. (The caFile is an upstream address's, so `certifi` has an upstream of its own.)"""
    services = {name: (upstream.url, name != "certifi") for name, upstream in https_upstreams.items()}
    lines = ["http: {port: {port}, hostname: 127.0.0.1}", tls_section(pki, https_port).rstrip()]
    lines.append("policies: [proxy]\napiEndpoints:")
    lines += [f"  {name}: {{host: {name}.example.test}}" for name in services]
    lines.append("serviceEndpoints:")
    for name, (url, with_ca) in services.items():
        ca = f", proxyOptions: {{target: {{caFile: {pki.ca.cert_file.name}}}}}" if with_ca else ""
        lines.append(f"  {name}: {{url: '{url}'{ca}}}")
    lines.append("pipelines:")
    for name in services:
        lines.append(f"  {name}:\n    apiEndpoints: [{name}]")
        lines.append(f"    policies: [{{proxy: [{{action: {{serviceEndpoint: {name}}}}}]}}]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def upstream_tls_gateway(start_gateway, pki, https_upstreams):
    https_port = free_port()
    gateway = start_gateway(upstream_tls_config(pki, https_upstreams, https_port))
    wait_for_port(https_port, gateway.process, gateway.log_path)
    gateway.https_port = https_port
    return gateway


def test_an_https_upstream_signed_by_the_configured_ca_is_reached(upstream_tls_gateway):
    reply = upstream_tls_gateway.send("/over/tls", host="good.example.test")
    assert reply.status == 200, reply.text
    assert json.loads(reply.body)["path"] == "/over/tls"


@pytest.mark.parametrize("name", ["certifi", "selfsigned", "wrongname", "expired"])
def test_a_bad_upstream_certificate_is_a_502(upstream_tls_gateway, name):
    reply = upstream_tls_gateway.send("/x", host=f"{name}.example.test")
    assert reply.status == 502
    assert reply.text == "Bad gateway."
    # The reason goes to the log, not to the client.
    assert wait_until(lambda: "Certificate verify failed" in upstream_tls_gateway.log())


def test_a_bad_upstream_certificate_is_a_502_for_http2_clients_too(upstream_tls_gateway, pki):
    context = client_context(pki.ca.cert_file, ["h2"])
    with tls_connect(upstream_tls_gateway.https_port, "api.example.test", context) as conn:
        client = H2Client(conn)
        headers, body = client.get("wrongname.example.test", "/x")
        assert headers[b":status"] == b"502"
        assert body == b"Bad gateway."
        headers, body = client.get("good.example.test", "/y")
        assert headers[b":status"] == b"200"


def test_ssl_insecure_is_refused(tmp_path, start_gateway, pki, https_upstreams):
    with pytest.raises(RuntimeError, match="ssl_insecure would accept any upstream certificate"):
        start_gateway(upstream_tls_config(pki, https_upstreams, free_port()), options=("ssl_insecure=true",))


def services_config(tmp_path: Path, service: str) -> Path:
    path = tmp_path / "gateway.config.yml"
    path.write_text(
        "http: {port: 8080}\npolicies: [proxy]\napiEndpoints: {api: {host: '*'}}\n"
        f"serviceEndpoints:\n{service}"
        "pipelines: {api: {apiEndpoints: [api], policies: [{proxy: [{action: {serviceEndpoint: a}}]}]}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            "  a: {url: 'https://x.test', proxyOptions: {secure: false}}\n",
            "serviceEndpoints.a.proxyOptions.secure: false would accept any upstream certificate",
        ),
        (
            "  a: {url: 'https://x.test', proxyOptions: {target: {keyFile: k.pem}}}\n",
            "serviceEndpoints.a.proxyOptions.target.keyFile: client certificates to upstreams are not "
            "supported yet",
        ),
        (
            "  a: {url: 'https://x.test', proxyOptions: {target: {caFile: none.pem}}}\n",
            "serviceEndpoints.a.proxyOptions.target.caFile: cannot read {dir}/none.pem",
        ),
        (
            "  a: {url: 'https://x.test', proxyOptions: {target: {caFile: api.key.pem}}}\n",
            "serviceEndpoints.a.proxyOptions.target.caFile: {dir}/api.key.pem holds no PEM certificate",
        ),
        (
            "  a: {url: 'http://x.test', proxyOptions: {target: {caFile: api.cert.pem}}}\n",
            "serviceEndpoints.a.proxyOptions.target.caFile: applies to https:// upstreams",
        ),
        (
            "  a: {url: 'https://x.test', proxyOptions: {target: {caFile: api.cert.pem}}}\n"
            "  b: {url: 'https://x.test:443/b', proxyOptions: {target: {caFile: wild.cert.pem}}}\n",
            "serviceEndpoints.b.proxyOptions.target.caFile: x.test:443 is also an upstream of "
            "serviceEndpoint 'a'",
        ),
        (
            "  a: {url: 'https://x.test', proxyOptions: {timeout: 5}}\n",
            "serviceEndpoints.a.proxyOptions.timeout: unknown key (accepted: secure, target)",
        ),
    ],
)
def test_bad_proxy_options_are_refused_by_key_path(tmp_path, pki, service, message):
    with pytest.raises(ConfigError) as info:
        load_config(services_config(tmp_path, service), StepState(), {})
    assert message.format(dir=tmp_path) in str(info.value)


def test_a_ca_file_is_watched(tmp_path, pki):
    service = "  a: {url: 'https://x.test', proxyOptions: {secure: true, target: {caFile: api.cert.pem}}}\n"
    config = load_config(services_config(tmp_path, service), StepState(), {})
    assert config.upstream_trust.context_for(("x.test", 443)) is not None
    assert tmp_path / "api.cert.pem" in config.watched_files


def test_upstream_verification_under_the_lean_runner(start_gateway, pki, https_upstreams):
    # There mitmproxy's TlsConfig builds the upstream connection before the gateway's hook runs.
    gateway = start_gateway(upstream_tls_config(pki, https_upstreams, free_port()), runner="mitmgateway")
    assert gateway.send("/", host="good.example.test").status == 200
    assert gateway.send("/", host="wrongname.example.test").status == 502
    assert gateway.send("/", host="certifi.example.test").status == 502


def test_a_client_quiet_mid_head_over_tls_gets_408(start_gateway, upstreams, pki):
    https_port = free_port()
    config = (
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        "limits: {headersTimeoutMs: 500}\n"
        + tls_section(pki, https_port)
        + PROXY_ONLY.format(upstream=upstreams["orders"].url)
    )
    gateway = start_gateway(config)
    wait_for_port(https_port, gateway.process, gateway.log_path)
    with tls_connect(https_port, "api.example.test", client_context()) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n")  # and then nothing
        assert conn.recv(4096).startswith(b"HTTP/1.1 408 ")
    assert https_get(https_port, "api.example.test", "/", pki.ca.cert_file)[0] == 200


def test_an_https_upstream_past_proxy_timeout_is_cut_off_with_502(start_gateway, pki, https_upstreams):
    # Under TLS the gateway cannot answer in the upstream's place (see injection.py): it closes
    # the upstream connection, and the client gets 502 at the timeout rather than waiting.
    upstream = https_upstreams["good"]
    config = (
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        "apiEndpoints: {api: {host: '*'}}\n"
        f"serviceEndpoints: {{backend: {{url: '{upstream.url}', "
        f"proxyOptions: {{target: {{caFile: {pki.ca.cert_file.name}}}}}}}}}\n"
        "policies: [proxy]\n"
        "pipelines:\n"
        "  api:\n"
        "    apiEndpoints: [api]\n"
        "    policies: [{proxy: [{action: {serviceEndpoint: backend, proxyTimeout: 500}}]}]\n"
    )
    gateway = start_gateway(config)
    started = time.monotonic()
    reply = gateway.send("/slow?delay=5")
    assert (reply.status, reply.text) == (502, "Bad gateway.")
    assert time.monotonic() - started < 3
    assert gateway.send("/fast").status == 200


def test_https_upstreams_are_checked_against_the_system_cas(start_gateway, pki, https_upstreams, monkeypatch):
    # An operator trusts an internal CA system-wide (here through OpenSSL's SSL_CERT_FILE): the
    # gateway follows, with no caFile in its config.
    config = (
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        "apiEndpoints: {api: {host: '*'}}\n"
        f"serviceEndpoints: {{backend: {{url: '{https_upstreams['certifi'].url}'}}}}\n"
        "policies: [proxy]\n"
        "pipelines:\n"
        "  api: {apiEndpoints: [api], policies: [{proxy: [{action: {serviceEndpoint: backend}}]}]}\n"
    )
    assert start_gateway(config, name="default.yml").send("/").status == 502  # not in the system's CAs
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert_file))
    assert start_gateway(config, name="system.yml").send("/").status == 200
