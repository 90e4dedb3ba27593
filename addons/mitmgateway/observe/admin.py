"""The admin port: ``/health``, ``/ready`` and ``/metrics``, and Express Gateway's admin REST API
(admin_api/), apart from the traffic port.

It runs in a thread with the standard library's HTTP server, in the gateway process (mitmdump,
or the lean runner with one worker) or in the pool of ``--workers N``, so that a slow scrape or a
write never sits on the proxy's event loop. /health answers as long as the process serves; /ready
only once a valid config is loaded (in a pool: every worker has one), which is what a load
balancer or an orchestrator should route by. The probes need no credential; the REST API needs
the admin token (``Authorization: Bearer``) when one is configured, and the config loader refuses
an admin port off loopback without one.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST

from ..admin_api import AdminApi
from ..admin_api.routes import AdminRequest, Reply
from ..clients import is_loopback
from ..config.companion_files import consumers_file
from ..config.model import GatewayConfig
from ..policies.key_auth import hash_api_key_secret
from ..shared_consumers import SharedConsumers
from ..stores import StoreSettings

logger = logging.getLogger("mitmgateway")

MAX_ADMIN_BODY = 1 << 20
SERVED_WITHIN_SECONDS = 10.0
"""How long a write waits for the gateway to serve it before answering anyway (and saying so)."""


@dataclass(frozen=True)
class AdminApiSettings:
    config_file: Path
    consumers_file: Path
    token_hash: str | None
    consumer_store: StoreSettings | None = None
    """Where the consumers are kept when not in consumers_file: a Redis."""


def admin_api_settings(config: GatewayConfig) -> AdminApiSettings | None:
    if config.admin is None:
        return None
    consumers = config.consumers
    store = consumers.settings if isinstance(consumers, SharedConsumers) else None
    where = consumers_file(config.file.parent, consumers)
    return AdminApiSettings(config.file, where, config.admin.token_hash, store)


def announce_sources(ready_file: Path, sources: Mapping[str, object]) -> None:
    """A pool worker's ready file: what its config in service was read from (CurrentConfig.served)."""
    temporary = ready_file.with_name(f".{ready_file.name}")
    temporary.write_text(json.dumps(sources))
    os.replace(temporary, ready_file)


def announced(ready_file: Path, key: str) -> object:
    """What the worker behind `ready_file` serves of the source `key` (None if unknown)."""
    try:
        return json.loads(ready_file.read_text() or "{}").get(key)
    except (OSError, ValueError):
        return None


class AdminServer:
    def __init__(
        self,
        ready: Callable[[], bool],
        metrics: Callable[[], bytes],
        served: Callable[[str], list[object]] = lambda _key: [],
    ) -> None:
        """`served(key)`: what each process of the gateway serves of the source `key` (a file's
        signature, the version of consumers in Redis), for a write to wait for."""
        self.ready = ready
        self.metrics = metrics
        self.served = served
        self.address: tuple[str, int] | None = None
        self.api: AdminApi | None = None
        self.token_hash: str | None = None
        self._settings: AdminApiSettings | None = None
        self._server: ThreadingHTTPServer | None = None

    def configure(self, address: tuple[str, int] | None, settings: AdminApiSettings | None = None) -> None:
        """Serve on `address` (host, port), moving or stopping the server when it changes."""
        if settings != self._settings:
            self._settings = settings
            self.token_hash = settings.token_hash if settings else None
            self.api = (
                AdminApi(
                    settings.config_file,
                    settings.consumers_file,
                    self._wait_until_served,
                    settings.consumer_store,
                )
                if settings
                else None
            )
        if address == self.address:
            return
        self.stop()
        if address is None:
            return
        try:
            self._server = ThreadingHTTPServer(address, _handler(self))
        except OSError as e:
            logger.error("admin port %s:%d: %s", *address, e.strerror or e)
            return
        self._server.daemon_threads = True
        self.address = address
        threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for a poll: keep reloads and exit quick
            name="mitmgateway admin",
            daemon=True,
        ).start()
        logger.info("admin port (/health, /ready, /metrics, the admin API) on http://%s:%d", *address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server = None
        self.address = None

    def authorized(self, authorization: str | None) -> bool:
        if self.token_hash is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hash_api_key_secret(token.strip()), self.token_hash
        )

    def _wait_until_served(self, key: str, is_served: Callable[[object], bool]) -> None:
        deadline = time.monotonic() + SERVED_WITHIN_SECONDS
        while not all(is_served(value) for value in self.served(key)):
            if time.monotonic() > deadline:
                logger.warning(
                    "admin API: %s written, but not served after %.0f s", key, SERVED_WITHIN_SECONDS
                )
                return
            time.sleep(0.05)


def _names_loopback(host: str | None) -> bool:
    """Whether a Host field names this machine's loopback (localhost or a loopback address, with
    any port)."""
    name = (host or "").strip()
    if name.rpartition(":")[2].isdigit() and (not name.startswith("[") or "]:" in name):
        name = name.rpartition(":")[0]
    return is_loopback(name)


def _handler(admin: AdminServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that stops sending mid-request does not hold its thread for ever

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/health":
                self._reply(200, b"ok\n")
            elif path == "/ready":
                ok = admin.ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"no valid config loaded\n")
            elif path == "/metrics":
                self._reply(200, admin.metrics(), CONTENT_TYPE_LATEST)
            else:
                self._api("GET")

        def do_POST(self) -> None:
            self._api("POST")

        def do_PUT(self) -> None:
            self._api("PUT")

        def do_DELETE(self) -> None:
            self._api("DELETE")

        def _api(self, method: str) -> None:
            api = admin.api
            if api is None:
                self._reply(404, b"Not Found\n")
                return
            if not admin.authorized(self.headers.get("Authorization")):
                self._reply(401, b"the admin API needs the admin token (Authorization: Bearer TOKEN)\n")
                return
            if admin.token_hash is None and not _names_loopback(self.headers.get("Host")):
                # Without a token, only what loopback names: a web page the operator opens could
                # otherwise reach it under a name of its own resolving to 127.0.0.1 (DNS rebinding).
                self._reply(403, b"the admin API answers to localhost and 127.0.0.1 only\n")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._reply(400, b"Content-Length must be a number\n")
                return
            if length > MAX_ADMIN_BODY:
                self._reply(413, b"Payload Too Large\n")
                return
            raw = self.rfile.read(length) if length > 0 else b""
            content_type = (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
            if raw.strip() and content_type != "application/json":
                # A web page may POST text/plain here unasked; it cannot send JSON without a
                # preflight, which this server never grants.
                self._reply(415, b"the admin API takes application/json\n")
                return
            try:
                body = json.loads(raw) if raw.strip() else None
            except (ValueError, RecursionError) as e:
                self._reply(400, f"the body is not JSON: {str(e)[:200]}\n".encode())
                return
            path, _, query = self.path.partition("?")
            try:
                reply = api.handle(AdminRequest(method, path, dict(parse_qsl(query)), body))
            except Exception:
                logger.exception("admin API: %s %s failed", method, path)
                reply = Reply(500, "admin API error (the gateway's log has the details)")
            if method != "GET":  # who changed what, for the operator
                logger.info(
                    "admin API: %s %s from %s: %d", method, path, self.client_address[0], reply.status
                )
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            if reply.body is None:
                self._reply(reply.status, b"")
            elif isinstance(reply.body, str):
                self._reply(reply.status, reply.body.encode() + (b"\n" if reply.body else b""))
            else:
                self._reply(reply.status, json.dumps(reply.body).encode(), "application/json; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds are not worth a log line

    return Handler
