#!/usr/bin/env python3
"""A small upstream service standing in for "customers" or "orders".

Usage: demo_upstream.py NAME PORT
Answers every request with JSON naming the service and echoing what it received (method, path,
headers, body length), so a reader can see what the gateway forwarded. ``?delay=SECONDS`` makes
it wait that long before answering (to see the gateway's upstream timeout).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def make_handler(service: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            delay = parse_qs(urlsplit(self.path).query).get("delay")
            if delay:
                time.sleep(float(delay[0]))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            payload = json.dumps(
                {
                    "service": service,
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "bodyLength": len(body),
                    "body": body.decode("utf-8", "replace"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                # The gateway may have given up waiting (its upstream timeout).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(name))
    print(f"{name} listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
