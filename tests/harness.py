"""Real processes for the end-to-end tests: mitmdump with our addon, demo upstreams on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from demo_upstream import make_handler
from processes import (
    BIN,
    ENTRY,
    ROOT,
    free_port,
    gateway_command,
    listening_pids,
    rss_bytes,
    start_upstream,
    stop,
    wait_for_port,
)

__all__ = ["BIN", "ENTRY", "ROOT", "free_port", "listening_pids", "rss_bytes", "stop", "wait_for_port"]


@dataclass
class Reply:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def send(
    port: int,
    path: str = "/",
    *,
    host: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, response.reason, response.headers, response.read())
    finally:
        conn.close()


@dataclass
class RawReply:
    data: bytes
    """Everything the gateway sent until it closed or went quiet."""
    closed: bool
    """Whether the gateway closed the connection within the timeout (False: it went quiet)."""


def exchange(port: int, data: bytes, timeout: float = 5) -> RawReply:
    """Send raw bytes on a fresh connection and read until the gateway closes it or `timeout`
    passes without a byte: a stalled connection must not pass for a closed one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            return RawReply(received, closed=False)
        except ConnectionResetError:
            pass  # a reset is a close too, if not a graceful one
        return RawReply(received, closed=True)


def unplaced(message: str) -> str:
    """A config error without the line and column after its file name."""
    return re.sub(r"(\.ya?ml|\.json):\d+:\d+: ", r"\1: ", message)


def bearer(token: str, **headers: str) -> dict[str, str]:
    """Request headers carrying `token` as a Bearer credential, and any others given."""
    return {"Authorization": f"Bearer {token}", **headers}


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWTs encode their parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def admin_get(port: int, path: str) -> tuple[int, str]:
    """GET `path` on an admin port: (status, body), or (0, "") while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class Upstream:
    """scripts/demo_upstream.py as a real process: echoes what it received as JSON."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process, self.port = start_upstream(name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.process)


class Gateway:
    """`mitmdump -s addons/gateway.py --set gateway_config=FILE`, as a user starts it."""

    def __init__(
        self,
        config: Path,
        port: int,
        confdir: Path,
        entry: Path = ENTRY,
        runner: str = "mitmdump",
        options: tuple[str, ...] = (),
        workers: int = 1,
    ) -> None:
        """`runner`: mitmdump or mitmweb (with `entry` as -s script), or mitmgateway (the lean runner)."""
        self.config = config
        self.port = port
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("wb")
        command = gateway_command(runner, config, confdir, workers, entry)
        self.process = subprocess.Popen(
            [*command, *(arg for s in options for arg in ("--set", s))],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        wait_for_port(port, self.process, self.log_path)

    def send(self, path: str = "/", **kwargs) -> Reply:  # type: ignore[no-untyped-def]
        return send(self.port, path, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        stop(self.process)
        self._log.close()
        return self.process.returncode


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class RedisServer:
    """A real redis-server on 127.0.0.1 (no persistence), which a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def answer_json(handler: BaseHTTPRequestHandler, payload: object, status: int = 200) -> None:
    """Answer the request `handler` serves with `payload` as JSON."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class LocalServer:
    """An HTTP server in a thread of the test process, on 127.0.0.1: `start()` serves with the
    handler class `handler()` makes (after `stop()`, on the same port again: connections are
    refused meanwhile, as from a server that is down)."""

    port = 0
    _server: ThreadingHTTPServer | None = None
    tls_context: ssl.SSLContext | None = None
    """Set, the server speaks TLS with it (its url is https)."""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> None:
        handler = self.handler()
        # A handler writes its head and body apart: with Nagle's algorithm the second write of a
        # keep-alive answer waits for the gateway's delayed ACK, 40 ms a request.
        handler.disable_nagle_algorithm = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        if self.tls_context is not None:
            self._server.socket = self.tls_context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class RawServer:
    """A TCP server in a thread of the test process, on 127.0.0.1, for an upstream that speaks
    HTTP its own way (or not at all): `answer(conn)` runs in a thread per connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread; close does not)
        self.listener.close()


class JwksServer(LocalServer):
    """An identity provider's JWKS endpoint.

    `document` and `cache_control` may be changed while it serves; `delay` makes it slow.
    """

    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.cache_control = "max-age=300"
        self.delay = 0.0
        self.fetches = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                time.sleep(provider.delay)
                body = json.dumps(provider.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", provider.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@dataclass(frozen=True)
class Parsed:
    """One request as an upstream's HTTP parser read it."""

    connection: tuple[str, int]
    """The gateway's end of the connection it came on."""
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]


class RecordingUpstream:
    """The demo upstream (Python's http.server, as lenient as many real servers), in a thread of
    the test process, logging every request it parses with the connection it came on.

    Like a server that speaks the protocols it is asked to switch to, it answers ``101`` to any
    request carrying ``Upgrade`` (and to ``/switch...`` whatever it carries), then goes on reading
    requests on that connection: what an unjudged tunnel would deliver to it."""

    def __init__(self) -> None:
        self.parsed: list[Parsed] = []
        upstream = self
        echo = make_handler("recording")

        class Handler(echo):  # type: ignore[valid-type,misc]
            def _answer(self) -> None:
                headers = tuple(self.headers.items())
                upstream.parsed.append(Parsed(self.client_address, self.command, self.path, headers))
                if "Upgrade" in self.headers or self.path.startswith("/switch"):
                    self.send_response(101)
                    self.send_header("Upgrade", self.headers.get("Upgrade", "h2c"))
                    self.send_header("Connection", "Upgrade")
                    self.end_headers()
                    return
                super()._answer()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def per_connection(self) -> dict[tuple[str, int], list[Parsed]]:
        connections: dict[tuple[str, int], list[Parsed]] = {}
        for request in list(self.parsed):
            connections.setdefault(request.connection, []).append(request)
        return connections

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        match = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def client_connections(admin_port: int) -> tuple[float, float]:
    """The gateway's client connections as its admin port counts them: (live, resting)."""
    text = admin_get(admin_port, "/metrics")[1]
    return (
        metric(text, "mitmgateway_client_connections", state="live"),
        metric(text, "mitmgateway_client_connections", state="resting"),
    )
