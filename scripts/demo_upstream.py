#!/usr/bin/env python3
"""A small upstream service standing in for "customers" or "orders".

Usage: demo_upstream.py NAME PORT
Answers every request with JSON naming the service and echoing what it received (method, path,
headers, body, and how many requests it has served), so a reader can see what the gateway
forwarded. ``?delay=SECONDS`` makes it wait that long before answering (to see the gateway's
upstream timeout); ``?cacheControl=``, ``?vary=`` and ``?setCookie=`` set those response headers.
``?chunked=BYTES`` answers that many bytes of filler instead, chunked (no Content-Length), which
the gateway streams to the client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ECHOED_HEADERS = (("cacheControl", "Cache-Control"), ("vary", "Vary"), ("setCookie", "Set-Cookie"))


def make_handler(service: str) -> type[BaseHTTPRequestHandler]:
    served = [0]  # requests this service has answered, so a client can tell a cached answer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # its head and body are two writes: no 40 ms wait on the second

        def _answer(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            delay = query.get("delay")
            if delay:
                time.sleep(float(delay[0]))
            served[0] += 1
            body = self._read_body()
            if "chunked" in query:
                self._answer_chunked(int(query["chunked"][0]))
                return
            payload = json.dumps(
                {
                    "service": service,
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "bodyLength": len(body),
                    "bodySha256": hashlib.sha256(body).hexdigest(),
                    "body": body.decode("utf-8", "replace"),
                    "served": served[0],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            # ?cacheControl=...&vary=... let tests see how the gateway's cache follows them.
            for name, header in ECHOED_HEADERS:
                if name in query:
                    self.send_header(header, query[name][0])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                # The gateway may have given up waiting (its upstream timeout).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        def _answer_chunked(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            # Many writes, as a large download arrives: the gateway passes them on as they come.
            chunk = b"0123456789abcdef" * 4099
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while size > 0:
                    piece = chunk[:size]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    size -= len(piece)
                self.wfile.write(b"0\r\n\r\n")

        def _read_body(self) -> bytes:
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return body

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit(f"usage: {sys.argv[0]} NAME PORT")
    name, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(name))
    print(f"{name} listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
