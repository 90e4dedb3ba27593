"""WebSocket upgrades through a pipeline (#7): refused by its auth step like any request, or
upgraded and carried both ways. A real mitmdump; the upstream and the client speak wsproto (which
mitmproxy itself uses)."""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from certificates import CertificateAuthority
from conftest import one_pipeline
from harness import RawServer, free_port, wait_for_port

GREETING = "welcome"


class WebSocketEchoServer(RawServer):
    """A WebSocket upstream on 127.0.0.1: greets each client, then echoes what it receives."""

    def __init__(self) -> None:
        self.handshakes: list[Request] = []
        super().__init__()

    def answer(self, conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        self.handshakes.append(event)
                        conn.sendall(ws.send(AcceptConnection()) + ws.send(TextMessage(data=GREETING)))
                    elif isinstance(event, TextMessage):
                        conn.sendall(ws.send(TextMessage(data=f"echo: {event.data}")))
                    elif isinstance(event, BytesMessage):
                        conn.sendall(ws.send(BytesMessage(data=b"echo: " + bytes(event.data))))
                    elif isinstance(event, Ping):
                        conn.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return


class WebSocketClient:
    def __init__(
        self, port: int, host: str, target: str, headers: dict[str, str], tls: ssl.SSLContext | None = None
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.sock.sendall(self.ws.send(Request(host=host, target=target, extra_headers=extra)))
        self.pending: list[Event] = []

    def next_event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the gateway closed the connection"
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def send(self, event: Event) -> None:
        self.sock.sendall(self.ws.send(event))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ws_upstream():
    server = WebSocketEchoServer()
    yield server
    server.stop()


def ws_config(ws_upstream: WebSocketEchoServer, public_key: object, extra: str = "") -> str:
    steps = f"""
- rate-limit: [{{action: {{max: 100, windowMs: 60000}}}}]
- jwt: [{{action: {{secretOrPublicKeyFile: {public_key}, checkCredentialExistence: false}}}}]
- proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""
    return one_pipeline(ws_upstream.url, steps, endpoint="host: chat.local, paths: ['/ws/*']", extra=extra)


@pytest.fixture
def ws_gateway(start_gateway, ws_upstream, rsa_keys):
    return start_gateway(ws_config(ws_upstream, rsa_keys[1]))


def test_an_upgrade_without_a_valid_token_gets_401_and_no_upgrade(ws_gateway, ws_upstream):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        client = WebSocketClient(ws_gateway.port, "chat.local", "/ws/room", headers)
        try:
            event = client.next_event()
            assert isinstance(event, RejectConnection), event
            assert event.status_code == 401
            # The rate-limit step ran before the jwt step: its headers are on the refusal.
            assert (b"x-ratelimit-limit", b"100") in event.headers
            assert event.has_body
            body = b""
            while True:
                data = client.next_event()
                assert isinstance(data, RejectData)
                body += data.data
                if data.body_finished:
                    break
            assert body == b"Unauthorized"
        finally:
            client.close()
    assert ws_upstream.handshakes == [], "a refused upgrade never reaches the upstream"


def test_an_upgrade_with_a_token_carries_messages_both_ways(ws_gateway, ws_upstream, token):
    authorization = {"Authorization": f"Bearer {token}"}
    client = WebSocketClient(ws_gateway.port, "chat.local", "/ws/room?x=1", authorization)
    try:
        event = client.next_event()
        assert isinstance(event, AcceptConnection), event
        # The upstream speaks first, then answers each message.
        event = client.next_event()
        assert isinstance(event, TextMessage) and event.data == GREETING
        client.send(TextMessage(data="hello"))
        event = client.next_event()
        assert isinstance(event, TextMessage) and event.data == "echo: hello"
        client.send(BytesMessage(data=b"\x00\x01binary"))
        event = client.next_event()
        assert isinstance(event, BytesMessage) and bytes(event.data) == b"echo: \x00\x01binary"
        client.send(CloseConnection(code=1000))
        event = client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1000
    finally:
        client.close()
    (handshake,) = ws_upstream.handshakes
    assert handshake.target == "/ws/room?x=1"
    forwarded = {name.lower(): value for name, value in handshake.extra_headers}
    assert forwarded[b"x-forwarded-for"] == b"127.0.0.1"
    # The proxy step strips hop-by-hop headers but keeps what the upgrade needs (wsproto itself
    # checks Connection: Upgrade, Upgrade: websocket and the key on the upstream side).
    assert b"keep-alive" not in forwarded


def test_a_websocket_over_the_https_listener(start_gateway, ws_upstream, rsa_keys, token, tmp_path):
    ca = CertificateAuthority(tmp_path)
    issued = ca.issue("chat", "chat.local")
    https_port = free_port()
    entry = f"{{key: {issued.key_file}, cert: {issued.cert_file}}}"
    https = f"https: {{port: {https_port}, hostname: 127.0.0.1, tls: {{chat.local: {entry}}}}}\n"
    gateway = start_gateway(ws_config(ws_upstream, rsa_keys[1], extra=https))
    wait_for_port(https_port, gateway.process, gateway.log_path)
    tls = ssl.create_default_context(cafile=str(ca.cert_file))
    tls.set_alpn_protocols(["http/1.1"])
    client = WebSocketClient(https_port, "chat.local", "/ws/tls", {"Authorization": f"Bearer {token}"}, tls)
    try:
        assert isinstance(client.next_event(), AcceptConnection)
        assert client.next_event() == TextMessage(data=GREETING)
        client.send(TextMessage(data="over tls"))
        event = client.next_event()
        assert isinstance(event, TextMessage) and event.data == "echo: over tls"
    finally:
        client.close()
    forwarded = dict(ws_upstream.handshakes[0].extra_headers)
    assert forwarded[b"x-forwarded-proto"] == b"https"
