"""oauth2-introspect through a running gateway, against a real introspection endpoint on
127.0.0.1 that the test runs: active, inactive and missing tokens, scopes, answers remembered
(for ttl, never past exp) and shared by concurrent requests, and the endpoint's outage (down,
slow): answered 503 within the timeout, logged once, served again when it is back."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

import pytest

from harness import LocalServer, answer_json, wait_until

GATEWAY_CREDENTIAL = "Basic Z2F0ZXdheTpzZWNyZXQ="


class AuthorizationServer(LocalServer):
    """An RFC 7662 introspection endpoint: `tokens` maps a token to its answer (unknown ones are
    inactive); each call is kept; `delay` holds answers back."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict] = {}
        self.calls: list[tuple[dict[str, list[str]], str | None, str | None]] = []
        self.delay = 0.0
        self.start()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                owner.calls.append(
                    (form, self.headers.get("Authorization"), self.headers.get("Content-Type"))
                )
                time.sleep(owner.delay)
                answer_json(self, owner.tokens.get(form["token"][0], {"active": False}))

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"


CONFIG = """\
http: {{port: {{port}}, hostname: 127.0.0.1}}
apiEndpoints:
  orders: {{host: '*', paths: ['/orders/*'], scopes: ['orders:read']}}
  open: {{host: '*', paths: ['/open/*']}}
serviceEndpoints:
  backend: {{url: '{upstream}'}}
policies: [oauth2-introspect, proxy]
pipelines:
  orders:
    apiEndpoints: [orders]
    policies:
      - oauth2-introspect:
          - action: {{endpoint: '{endpoint}', authorization_value: '{credential}', timeout: 1000, ttl: 60}}
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
  open:
    apiEndpoints: [open]
    policies:
      - oauth2-introspect: [{{action: {{endpoint: '{endpoint}', timeout: 1000, passThrough: true}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.fixture
def authorization_server():
    server = AuthorizationServer()
    yield server
    server.stop()


@pytest.fixture
def gateway(start_gateway, upstreams, authorization_server):
    config = CONFIG.format(
        upstream=upstreams["orders"].url, endpoint=authorization_server.url, credential=GATEWAY_CREDENTIAL
    )
    return start_gateway(config)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_judged_by_the_authorization_server_and_its_answers_remembered(
    gateway, authorization_server
):
    server = authorization_server
    server.tokens["good"] = {"active": True, "sub": "alice", "scope": "orders:read orders:write"}
    server.tokens["narrow"] = {"active": True, "client_id": "app-1", "scope": "profile"}
    server.tokens["brief"] = {
        "active": True,
        "sub": "bob",
        "scope": "orders:read",
        "exp": int(time.time()) + 2,
    }

    assert [gateway.send("/orders/1", headers=bearer("good")).status for _ in range(3)] == [200] * 3
    assert len(server.calls) == 1, "asked once, then remembered"
    form, authorization, content_type = server.calls[0]
    assert form == {"token": ["good"], "token_type_hint": ["access_token"]}
    assert (authorization, content_type) == (GATEWAY_CREDENTIAL, "application/x-www-form-urlencoded")

    missing = gateway.send("/orders/1")
    assert (missing.status, missing.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert gateway.send("/orders/1", headers=bearer("revoked")).status == 401
    assert gateway.send("/orders/1", headers=bearer("narrow")).status == 403, "without orders:read"
    assert gateway.send("/orders/1?access_token=good").status == 200, "a token in the query"

    # Remembered for ttl, never past the token's exp.
    calls = len(server.calls)
    assert gateway.send("/orders/2", headers=bearer("brief")).status == 200
    assert gateway.send("/orders/2", headers=bearer("brief")).status == 200
    assert len(server.calls) == calls + 1
    time.sleep(2.2)
    gateway.send("/orders/2", headers=bearer("brief"))
    assert len(server.calls) == calls + 2, "asked again once the token expired"

    # passThrough: without a token, or with an inactive one, the request goes on anonymously.
    assert gateway.send("/open/1").status == 200
    assert gateway.send("/open/1", headers=bearer("revoked")).status == 200


def test_concurrent_requests_with_one_token_share_one_call(gateway, authorization_server):
    server = authorization_server
    server.tokens["shared"] = {"active": True, "sub": "carol", "scope": "orders:read"}
    server.delay = 0.5
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(gateway.send("/orders/1", headers=bearer("shared")).status)
        )
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    assert len(server.calls) == 1


def test_an_outage_is_answered_within_the_timeout_logged_once_and_ends_when_the_server_is_back(
    gateway, authorization_server
):
    server = authorization_server
    server.tokens["known"] = {"active": True, "sub": "dave", "scope": "orders:read"}
    server.tokens["later"] = {"active": True, "sub": "erin", "scope": "orders:read"}
    assert gateway.send("/orders/1", headers=bearer("known")).status == 200

    # Slow: each request is answered when the timeout (1 s) passes, not when the server answers.
    server.delay = 3
    started = time.monotonic()
    answers: list = []
    waiting = threading.Thread(
        target=lambda: answers.append(gateway.send("/orders/1", headers=bearer("later")))
    )
    waiting.start()
    assert wait_until(lambda: len(server.calls) == 2)  # the call is out, its answer held
    # Meanwhile the gateway serves: the call waits in a thread, not on the event loop.
    assert gateway.send("/orders/1", headers=bearer("known")).status == 200
    assert not answers, "served while the slow call was still out"
    waiting.join()
    assert (answers[0].status, answers[0].headers["Retry-After"]) == (503, "1")
    assert time.monotonic() - started < 2.5
    server.delay = 0

    # Down: the same, fast; a token answered before is still served; logged once.
    server.stop()
    assert [gateway.send("/orders/1", headers=bearer(f"new-{i}")).status for i in range(3)] == [503] * 3
    assert gateway.send("/orders/1", headers=bearer("known")).status == 200
    assert gateway.send("/open/1", headers=bearer("new-9")).status == 200, "passThrough: anonymous"
    assert gateway.log().count(f"token introspection at {server.url} unavailable") == 1, gateway.log()

    server.start()
    assert wait_until(lambda: gateway.send("/orders/1", headers=bearer("later")).status == 200, timeout=5)
    assert wait_until(lambda: f"token introspection at {server.url} is back" in gateway.log())
