"""TLS connections to the gateway's https listener, and a minimal HTTP/2 client over them (the h2
package mitmproxy itself uses), which can also send what a well-behaved client never would."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import h2.config
import h2.connection
import h2.events

Fields = list[tuple[bytes, bytes]]


def client_context(cafile: Path | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    if cafile is None:
        # Only looking at which certificate the gateway presents.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(cafile))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_connect(port: int, server_name: str | None, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


class StreamReset(AssertionError):
    """The gateway reset the stream instead of answering it."""


class H2Client:
    """An HTTP/2 client on a TLS socket; with ``raw=True`` it sends fields exactly as given
    (CR, LF, NUL, upper case, connection headers), as an attacker's client does."""

    def __init__(self, conn: ssl.SSLSocket, *, raw: bool = False) -> None:
        self.conn = conn
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=not raw, normalize_outbound_headers=not raw
            )
        )
        self.h2.initiate_connection()
        conn.sendall(self.h2.data_to_send())

    def get(self, authority: str, path: str) -> tuple[dict[bytes, bytes], bytes]:
        return self.request(self.head("GET", authority, path))

    @staticmethod
    def head(method: str, authority: str | bytes, path: str | bytes, *extra: tuple[bytes, bytes]) -> Fields:
        def b(value: str | bytes) -> bytes:
            return value.encode() if isinstance(value, str) else value

        pseudo = [(b":method", b(method)), (b":path", b(path)), (b":scheme", b"https")]
        return [*pseudo, (b":authority", b(authority)), *extra]

    def request(
        self, headers: Fields, body: bytes = b"", trailers: Fields | None = None
    ) -> tuple[dict[bytes, bytes], bytes]:
        """Send a request (body as flow control lets it, with no Content-Length unless given);
        its response headers and body. Raises StreamReset."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, headers, end_stream=not body and not trailers)
        sent = 0
        while sent < len(body):
            window = min(self.h2.local_flow_control_window(stream), self.h2.max_outbound_frame_size)
            if window > 0:
                self.h2.send_data(stream, body[sent : sent + window])
                sent += window
            else:
                self.h2.receive_data(self.conn.recv(65536))  # waiting for a WINDOW_UPDATE
            self.conn.sendall(self.h2.data_to_send())
        if trailers:
            self.h2.send_headers(stream, trailers, end_stream=True)
        elif body:
            self.h2.end_stream(stream)
        self.conn.sendall(self.h2.data_to_send())
        return self._response(stream)

    def post(self, authority: str, path: str, body: bytes) -> tuple[dict[bytes, bytes], bytes]:
        """A POST without Content-Length (as HTTP/2 allows)."""
        return self.request(self.head("POST", authority, path), body)

    def _response(self, stream: int) -> tuple[dict[bytes, bytes], bytes]:
        headers: dict[bytes, bytes] = {}
        body = b""
        while True:
            data = self.conn.recv(65536)
            assert data, "the gateway closed the HTTP/2 connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    self.conn.sendall(self.h2.data_to_send())
                    return headers, body
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise StreamReset(f"stream reset: {event.error_code}")
            self.conn.sendall(self.h2.data_to_send())
