"""The json-schema condition through a running gateway: its pipeline runs once the body has
arrived (held within limits.maxBufferedBodyBytes, 413 beyond), a body that does not validate takes
the step it guards, one that does goes on intact; a pipeline without it streams as before."""

from __future__ import annotations

import json
import socket

import pytest

from harness import exchange

CONFIG = """\
http: {{port: {{port}}, hostname: 127.0.0.1}}
limits: {{maxBufferedBodyBytes: 64kb}}
apiEndpoints:
  orders: {{host: '*', paths: ['/orders', '/orders/*']}}
  uploads: {{host: '*', paths: ['/upload']}}
serviceEndpoints:
  backend: {{url: '{upstream}'}}
policies: [terminate, proxy]
pipelines:
  orders:
    apiEndpoints: [orders]
    policies:
      - terminate:
          - condition:
              name: not
              condition:
                name: json-schema
                logErrors: true
                schema:
                  $id: http://shop.local/order.json
                  type: object
                  required: [sku, quantity]
                  properties:
                    sku: {{type: string}}
                    quantity: {{type: integer, minimum: 1}}
            action: {{statusCode: 422, message: not an order}}
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
  uploads:
    apiEndpoints: [uploads]
    policies:
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def gateway(start_gateway, upstreams):
    return start_gateway(CONFIG.format(upstream=upstreams["orders"].url))


def test_a_valid_body_goes_on_intact_and_an_invalid_one_takes_the_guarded_step(gateway):
    order = b'{"sku": "a-1", "quantity": 2}'
    reply = gateway.send("/orders", method="POST", headers=JSON, body=order)
    assert reply.status == 200
    echoed = json.loads(reply.body)
    assert (echoed["path"], echoed["bodyLength"]) == ("/orders", len(order))
    for body, headers in [
        (b'{"sku": "a-1", "quantity": 0}', JSON),
        (b'{"sku": "a-1"}', JSON),
        (b"sku=a-1&quantity=2", {"Content-Type": "application/x-www-form-urlencoded"}),  # strings
        (b"{not json", JSON),
        (order, {"Content-Type": "text/plain"}),
    ]:
        reply = gateway.send("/orders", method="POST", headers=headers, body=body)
        assert (reply.status, reply.text) == (422, "not an order"), body
    assert gateway.send("/orders").status == 422, "no body: nothing validates"
    assert (
        "json-schema pipelines.orders.policies[0].terminate[0].condition.condition: the body does not "
        "validate at $.quantity: 0 is less than the minimum of 1" in gateway.log()
    )


def test_a_chunked_body_is_held_until_it_has_all_arrived_and_one_too_large_is_refused(gateway):
    chunks = [b'{"sku": ', b'"a-1", "quan', b'tity": 3}']
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = b"POST /orders/1 HTTP/1.1\r\nHost: shop.local\r\nContent-Type: application/json\r\n"
    reply = exchange(gateway.port, head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framed)
    assert reply.data.startswith(b"HTTP/1.1 200"), reply.data[:200]
    assert b'"bodyLength": 29' in reply.data
    # Over maxBufferedBodyBytes: never held whole, refused; by its declared length, before a
    # client that waits for 100 Continue sends it.
    big = b'{"sku": "' + b"x" * (70 << 10) + b'", "quantity": 1}'
    assert gateway.send("/orders", method="POST", headers=JSON, body=big).status == 413
    head = b"POST /orders HTTP/1.1\r\nHost: shop.local\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=1) as conn:
        conn.sendall(head + b"Content-Length: 80000\r\nExpect: 100-continue\r\n\r\n")
        with pytest.raises(TimeoutError):
            conn.recv(4096)  # never invited: the answer is already 413
        conn.sendall(b"x" * 80000)  # (as a client does once it stops waiting)
        assert conn.recv(4096).startswith(b"HTTP/1.1 413 ")
    # A pipeline without a body condition streams a larger body through, as before.
    upload = bytes(range(256)) * (8 << 10)  # 2 MiB
    reply = gateway.send("/upload", method="POST", body=upload)
    assert reply.status == 200 and json.loads(reply.body)["bodyLength"] == len(upload)
