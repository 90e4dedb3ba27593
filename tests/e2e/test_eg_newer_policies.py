"""One Express Gateway config using what #16 brought, all at once, through a running gateway: an
https listener asking for client certificates, the tlsClientAuthenticated condition, oauth2-introspect
against a real introspection endpoint, the json-schema condition, and a rate limit per device (the
certificate's subject in rateLimitBy). It loads unchanged and behaves as Express Gateway documents."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess

from test_oauth2_introspect import AuthorizationServer

from certificates import CertificateAuthority, Issued
from harness import ROOT, free_port, wait_for_port

# As an Express Gateway user writes it (its docs' keys and nesting), nothing of ours in it.
CONFIG = """\
http: {{port: {{port}}, hostname: 127.0.0.1}}
https:
  port: {https_port}
  hostname: 127.0.0.1
  tls:
    default: {{key: {server_key}, cert: {server_cert}, ca: [{ca}]}}
  options: {{requestCert: true, rejectUnauthorized: false}}
apiEndpoints:
  orders:
    host: '*'
    paths: ['/orders', '/orders/*']
    methods: POST
    scopes: ['orders:write']
serviceEndpoints:
  backend: {{url: '{upstream}'}}
policies: [terminate, oauth2-introspect, rate-limit, proxy]
pipelines:
  orders:
    apiEndpoints: [orders]
    policies:
      - terminate:
          - condition: {{name: not, condition: {{name: tlsClientAuthenticated}}}}
            action: {{statusCode: 403, message: a device certificate is required}}
      - oauth2-introspect:
          - action: {{endpoint: '{endpoint}', authorization_value: 'Basic Z3c6cw==', ttl: 30}}
      - terminate:
          - condition:
              name: not
              condition:
                name: json-schema
                schema:
                  type: object
                  additionalProperties: false
                  required: [sku, quantity]
                  properties:
                    sku: {{type: string}}
                    quantity: {{type: integer, minimum: 1}}
            action: {{statusCode: 422, message: not an order}}
      - rate-limit:
          - action: {{max: 2, windowMs: 60000, rateLimitBy: '${{req.client.subject.CN}}'}}
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


def post(
    port: int, ca: CertificateAuthority, certificate: Issued | None, token: str, body: bytes
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.set_alpn_protocols(["http/1.1"])
    if certificate is not None:
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="api.example.test") as conn:
        head = (
            f"POST /orders HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        conn.sendall(head.encode() + body)
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        return response.status, response.read().decode()


def test_an_express_gateway_config_with_the_newer_pieces_loads_unchanged_and_behaves(
    start_gateway, upstreams, tmp_path
):
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("server", "api.example.test")
    device, other_device = (
        ca.issue("device", "device-7", client=True),
        ca.issue("d8", "device-8", client=True),
    )
    idp = AuthorizationServer()
    idp.tokens = {
        "good": {"active": True, "sub": "shop", "scope": "orders:write orders:read"},
        "reader": {"active": True, "sub": "viewer", "scope": "orders:read"},
    }
    https_port = free_port()
    config = CONFIG.format(
        https_port=https_port,
        upstream=upstreams["orders"].url,
        endpoint=idp.url,
        server_key=server.key_file.name,
        server_cert=server.cert_file.name,
        ca=ca.cert_file.name,
    )
    gateway = start_gateway(config)
    try:
        wait_for_port(https_port, gateway.process, gateway.log_path)
        check = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "mitmgateway"), "check", "-c", str(gateway.config)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0 and "OK" in check.stdout, check.stderr

        order = b'{"sku": "a-1", "quantity": 2}'
        assert post(https_port, ca, None, "good", order) == (403, "a device certificate is required")
        assert post(https_port, ca, device, "unknown", order)[0] == 401  # inactive token
        assert post(https_port, ca, device, "reader", order)[0] == 403  # lacks orders:write
        assert post(https_port, ca, device, "good", b'{"sku": "a-1", "quantity": 0}') == (422, "not an order")
        assert post(https_port, ca, device, "good", b"sku=a-1") == (422, "not an order")  # not JSON
        assert post(https_port, ca, device, "good", b'{"sku": "a", "quantity": 1, "x": 1}')[0] == 422
        status, answer = post(https_port, ca, device, "good", order)
        assert status == 200 and json.loads(answer)["body"] == order.decode()
        assert post(https_port, ca, device, "good", order)[0] == 200
        assert post(https_port, ca, device, "good", order)[0] == 429  # counted per device...
        assert post(https_port, ca, other_device, "good", order)[0] == 200  # ...not per gateway
        assert len({call[0]["token"][0] for call in idp.calls}) == 3  # answers remembered per token
    finally:
        idp.stop()
