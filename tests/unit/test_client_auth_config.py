"""https.options (requestCert, rejectUnauthorized) and the tls entries' ca: read at load, refused
with the key path when wrong; a recorded client certificate read back for a replay."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import http

from certificates import CertificateAuthority
from gateway_unit import make_flow
from mitmgateway.client_certificates import ClientCertificate
from mitmgateway.config.errors import ROOT, ConfigError
from mitmgateway.hooks.recorder import CLIENT_REQUEST_KEY, UPSTREAM_RESPONSE_KEY
from mitmgateway.https import parse_https
from mitmgateway.whatif.offline import OfflineGateway
from mitmgateway.whatif.recorded import Recorded


@pytest.fixture
def issued(tmp_path):
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("server", "api.example.test")
    return ca, server


def https(server, ca_entry: str = "", options: object = None) -> dict:
    entry = {"key": server.key_file.name, "cert": server.cert_file.name}
    if ca_entry:
        entry["ca"] = ca_entry
    raw: dict = {"port": 8443, "tls": {"default": entry}}
    if options is not None:
        raw["options"] = options
    return raw


def test_request_cert_with_a_ca_verifies_and_requires_by_default(tmp_path, issued):
    ca, server = issued
    listener = parse_https(
        https(server, ca.cert_file.name, {"requestCert": True}), ROOT.key("https"), tmp_path
    )
    assert listener.client_auth is not None and listener.client_auth.require
    assert ca.cert_file in listener.files, "a renewed CA file reloads the config"
    relaxed = parse_https(
        https(server, [ca.cert_file.name], {"requestCert": True, "rejectUnauthorized": False}),
        ROOT.key("https"),
        tmp_path,
    )
    assert relaxed.client_auth is not None and not relaxed.client_auth.require
    assert parse_https(https(server, ca.cert_file.name), ROOT.key("https"), tmp_path).client_auth is None


@pytest.mark.parametrize(
    ("ca_entry", "options", "error"),
    [
        ("", {"requestCert": True}, "https.options.requestCert: needs a tls entry's ca"),
        ("missing.pem", {"requestCert": True}, "https.tls.default.ca: cannot read"),
        ("server.key.pem", {"requestCert": True}, "https.tls.default.ca: "),
        ("CA", {"requestCert": True, "ciphers": "x"}, "https.options.ciphers: unknown key"),
        ("CA", {"requestCert": "yes"}, "https.options.requestCert: "),
    ],
)
def test_wrong_client_certificate_settings_are_refused_with_their_key_path(
    tmp_path, issued, ca_entry, options, error
):
    ca, server = issued
    entry = ca.cert_file.name if ca_entry == "CA" else ca_entry
    with pytest.raises(ConfigError) as refused:
        parse_https(https(server, entry, options), ROOT.key("https"), tmp_path)
    assert error in str(refused.value)


def test_a_recorded_certificate_reads_back_with_its_subject_fields():
    recorded = ClientCertificate.recorded("CN=device-7,O=Acme,OU=Sensors", True)
    assert recorded.as_request_member() == {
        "authorized": True,
        "subject": {"CN": "device-7", "O": "Acme", "OU": "Sensors"},
    }
    assert recorded.as_json() == {"subject": "CN=device-7,O=Acme,OU=Sensors", "verified": True}


def test_a_replay_judges_by_the_certificate_recorded_with_the_request(tmp_path):
    config = tmp_path / "gateway.config.yml"
    config.write_text(
        "http: {port: 8080}\napiEndpoints: {api: {host: '*'}}\n"
        "serviceEndpoints: {backend: {url: 'http://127.0.0.1:9001'}}\npolicies: [terminate, proxy]\n"
        "pipelines:\n  api:\n    apiEndpoints: [api]\n    policies:\n"
        "      - terminate: [{condition: {name: not, condition: {name: tlsClientAuthenticated}}, "
        "action: {statusCode: 403}}]\n"
        "      - proxy: [{action: {serviceEndpoint: backend}}]\n"
    )
    gateway = OfflineGateway(config, {})

    def replayed(certificate: dict | None):
        flow = make_flow()
        flow.metadata[CLIENT_REQUEST_KEY] = flow.request.get_state()
        flow.metadata["gateway"] = {} if certificate is None else {"clientCertificate": certificate}
        flow.response = http.Response.make(200)
        flow.metadata[UPSTREAM_RESPONSE_KEY] = flow.response.get_state()
        return asyncio.run(gateway.decide(Recorded.of_flow(flow)))[1]

    assert replayed({"subject": "CN=device-7", "verified": True}).label == "proxied 200"
    assert replayed({"subject": "CN=device-8", "verified": False}).label == "403 by terminate"
    assert replayed(None).label == "403 by terminate"
