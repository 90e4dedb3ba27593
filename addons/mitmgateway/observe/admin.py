"""The admin port: ``/health``, ``/ready`` and ``/metrics``, apart from the traffic port.

It runs in a thread with the standard library's HTTP server, in the gateway process (mitmdump,
or the lean runner with one worker) or in the pool of ``--workers N``, so that a slow scrape
never sits on the proxy's event loop. /health answers as long as the process serves; /ready only
once a valid config is loaded (in a pool: every worker has one), which is what a load balancer
or an orchestrator should route by.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

logger = logging.getLogger("mitmgateway")


class AdminServer:
    def __init__(self, ready: Callable[[], bool], metrics: Callable[[], bytes]) -> None:
        self.ready = ready
        self.metrics = metrics
        self.address: tuple[str, int] | None = None
        self._server: ThreadingHTTPServer | None = None

    def configure(self, address: tuple[str, int] | None) -> None:
        """Serve on `address` (host, port), moving or stopping the server when it changes."""
        if address == self.address:
            return
        self.stop()
        if address is None:
            return
        admin = self

        class Handler(BaseHTTPRequestHandler):
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
                    self._reply(404, b"Not Found\n")

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes and probes every few seconds are not worth a log line

        try:
            self._server = ThreadingHTTPServer(address, Handler)
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
        logger.info("admin endpoints (/health, /ready, /metrics) on http://%s:%d", *address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server = None
        self.address = None
