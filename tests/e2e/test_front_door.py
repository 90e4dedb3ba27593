"""The front door forwards only what it parsed (#11): attacks through a running gateway, under both
runners, over HTTP/1.1 and HTTP/2 (the TLS listener).

The setup is the one the README suggests: a guarded area (apiEndpoint ``admin``, ``paths: ['/admin',
'/admin/*']``, whose pipeline answers 403) beside an open catch-all, both served by one upstream.
That upstream is Python's http.server (lenient, as many real servers are) and logs every request it
parses with the connection it came on. Whatever the attack, it gets a 4xx (or the guarded
pipeline's 403), and the upstream never parses a second request, an injected header, or a path
that it reads as the guarded area.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

from certificates import CertificateAuthority
from h2_client import H2Client, StreamReset, client_context, tls_connect
from harness import Gateway, Parsed, RecordingUpstream, exchange, free_port, wait_for_port

RUNNERS = ["mitmdump", "mitmgateway"]

CONFIG = """\
http: {{port: {port}, hostname: 127.0.0.1}}
https:
  port: {https_port}
  hostname: 127.0.0.1
  tls:
    default: {{key: {key}, cert: {cert}}}
policies: [proxy, terminate]
apiEndpoints:
  admin: {{host: '*', paths: ['/admin', '/admin/*']}}
  open: {{host: '*'}}
serviceEndpoints:
  backend: {{url: '{upstream}'}}
pipelines:
  admin:
    apiEndpoints: [admin]
    policies:
      - terminate: [{{action: {{statusCode: 403, message: guarded}}}}]
  open:
    apiEndpoints: [open]
    policies:
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


@pytest.fixture(scope="module", params=RUNNERS)
def front(request, tmp_path_factory, confdir) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    folder: Path = tmp_path_factory.mktemp(f"front-door-{request.param}")
    ca = CertificateAuthority(folder)
    issued = ca.issue("gateway", "api.example.test")
    upstream = RecordingUpstream()
    port, https_port = free_port(), free_port()
    config = folder / "gateway.config.yml"
    config.write_text(
        CONFIG.format(
            port=port,
            https_port=https_port,
            key=issued.key_file.name,
            cert=issued.cert_file.name,
            upstream=upstream.url,
        )
    )
    gateway = Gateway(config, port, confdir, runner=request.param)
    wait_for_port(https_port, gateway.process, gateway.log_path)
    yield SimpleNamespace(gateway=gateway, upstream=upstream, https_port=https_port, ca=ca)
    gateway.stop()
    upstream.stop()


def upstream_reading(path: str) -> str:
    """The path as the most lenient upstreams read it: decoded (twice, as some frameworks behind
    a proxy do), backslashes as slashes, runs of slashes merged, dot-segments resolved, no case."""
    path = path.partition("?")[0]
    path = unquote(unquote(path)).replace("\\", "/")
    path = posixpath.normpath(re.sub("/+", "/", path))
    return path.lower()


def is_guarded(path: str) -> bool:
    read = upstream_reading(path)
    return read == "/admin" or read.startswith("/admin/")


class Watch:
    """What the upstream parsed during one attack."""

    def __init__(self, front: SimpleNamespace) -> None:
        self.front = front
        self.start = len(front.upstream.parsed)

    @property
    def parsed(self) -> list[Parsed]:
        return self.front.upstream.parsed[self.start :]

    def check(self, *, most: int = 1, chunked: bool = False) -> None:
        """`chunked`: the client itself sent a chunked body (no Transfer-Encoding was injected)."""
        parsed = self.parsed
        assert len(parsed) <= most, f"the upstream parsed {len(parsed)} requests: {parsed}"
        for request in parsed:
            assert not is_guarded(request.path), f"the guarded area was reached: {request}"
            names = [name.lower() for name, _ in request.headers]
            assert "x-user-id" not in names and (chunked or "transfer-encoding" not in names), request
            assert "upgrade" not in names, f"an upgrade was forwarded: {request}"
        per_connection = {}
        for request in parsed:
            per_connection.setdefault(request.connection, []).append(request)
        assert all(len(r) == 1 for r in per_connection.values()), f"two requests on one connection: {parsed}"
        log = self.front.gateway.log()
        assert "has crashed" not in log and "Traceback" not in log, log[-3000:]


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def statuses(answer: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def smuggling_body(request: bytes) -> bytes:
    return b"0\r\n\r\n" + request


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode()


SECOND = b"GET /admin/secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
CHUNKED_SMUGGLE = smuggling_body(b"GET /admin/secret HTTP/1.1\r\nHost: a\r\n\r\n")

HTTP1_MALFORMED = {
    "bare CR before Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: a\r\nX: X\rTransfer-Encoding: chunked\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(CHUNKED_SMUGGLE), CHUNKED_SMUGGLE),
    "bare CR in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: a\rX-User-Id: admin\r\n\r\n",
    "obsolete line folding": b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: a\r\n X-User-Id: admin\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: a\x00b\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "Host that is no authority": b"GET / HTTP/1.1\r\nHost: a/admin\r\n\r\n",
    "control byte in the target": b"GET /\x01admin HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "connect in lower case": b"connect /open HTTP/1.1\r\nHost: a\r\n\r\n",
    "Host with a port no TCP port can be": b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
}


@pytest.mark.parametrize("attack", list(HTTP1_MALFORMED))
def test_a_malformed_http1_head_is_400_and_reaches_nobody(front, attack):
    watch = Watch(front)
    reply = exchange(front.gateway.port, HTTP1_MALFORMED[attack] + SECOND, timeout=3)
    assert status_of(reply.data) == 400, reply.data[:300]
    assert reply.closed, "what follows a malformed head cannot be trusted: the connection must close"
    assert statuses(reply.data) == [400], "the bytes after it were read as a request"
    watch.check(most=0)


UPGRADES = {
    "H2C": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: H2C\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    "two Upgrade headers": b"Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    "h2c, foo": b"Connection: Upgrade\r\nUpgrade: h2c, foo\r\n",
    "foo": b"Connection: Upgrade\r\nUpgrade: foo\r\n",
    "TLS/1.2": b"Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n",
    "websocket without a key": b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
    "websocket on POST": b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
}


@pytest.mark.parametrize("upgrade", list(UPGRADES))
def test_an_upgrade_that_is_no_websocket_handshake_is_removed_and_opens_no_tunnel(front, upgrade):
    watch = Watch(front)
    method = b"POST" if upgrade == "websocket on POST" else b"GET"
    first = b"%s /open HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n%s\r\n" % (method, UPGRADES[upgrade])
    reply = exchange(front.gateway.port, first + SECOND, timeout=3)
    # Forwarded without its Upgrade (the upstream answers 200, not 101), and the next request on
    # the connection is judged by the gateway: the guarded pipeline's 403.
    assert statuses(reply.data) == [200, 403], reply.data[:600]
    assert len(watch.parsed) == 1 and watch.parsed[0].path == "/open"
    watch.check()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: %d\r\nConnection: Content-Length\r\n\r\n%s" % (len(SECOND), SECOND),
        b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(SECOND), SECOND),
    ],
    ids=["Content-Length", "Transfer-Encoding"],
)
def test_a_connection_header_naming_the_framing_cannot_unframe_the_body(front, framing):
    # Removing what Connection names would send the body on unframed: a second request upstream.
    watch = Watch(front)
    reply = exchange(front.gateway.port, b"POST /open HTTP/1.1\r\nHost: a\r\n" + framing, timeout=3)
    assert statuses(reply.data) == [200], reply.data[:600]
    assert [r.path for r in watch.parsed] == ["/open"]
    watch.check(chunked=b"chunked" in framing)


def test_a_switch_the_gateway_did_not_forward_is_502_never_a_tunnel(front):
    watch = Watch(front)
    reply = exchange(front.gateway.port, b"GET /switch HTTP/1.1\r\nHost: a\r\n\r\n" + SECOND, timeout=3)
    assert statuses(reply.data) == [502], reply.data[:600]
    assert reply.data.endswith(b"\r\n\r\nBad gateway."), reply.data[:600]
    assert reply.closed
    assert [r.path for r in watch.parsed] == ["/switch"]
    watch.check()


# Spellings of the guarded area that servers read as /admin: refused, or judged as /admin.
GUARDED_SPELLINGS = {
    "/%61dmin/x": 403,
    "/%41DMIN/x": 403,
    "/ADMIN/x": 403,
    "//admin/x": 403,
    "/admin//x": 403,
    "/admin%2fx": 400,
    "/admin%2Fx": 400,
    "/x/..%2fadmin": 400,
    "/%2Fadmin/x": 400,
    "/\\admin": 400,
    "/%5cadmin": 400,
    "/x/../admin": 400,
    "/x/%2e%2e/admin": 400,
    "/x/.%2E/admin": 400,
    "/%2561dmin/x": 400,
    "/admin%252fx": 400,
    "/admin;x/secret": 400,
    "/x/..;/admin": 400,
}


@pytest.mark.parametrize("path", list(GUARDED_SPELLINGS))
def test_every_spelling_of_a_guarded_path_over_http1_is_judged_as_it(front, path):
    watch = Watch(front)
    reply = exchange(front.gateway.port, get(path), timeout=3)
    assert status_of(reply.data) == GUARDED_SPELLINGS[path], reply.data[:300]
    watch.check(most=0)


@pytest.mark.parametrize(
    "path,forwarded",
    [
        ("/open/%7euser", "/open/~user"),
        ("/open/caf%c3%a9?q=%2F&x=a%20b", "/open/caf%C3%A9?q=%2F&x=a%20b"),
        ("/open/a%22b#frag", "/open/a%22b%23frag"),
        ("/open/..x/.y", "/open/..x/.y"),
        ("/administrator", "/administrator"),
    ],
)
def test_the_upstream_gets_the_canonical_path_that_was_matched(front, path, forwarded):
    watch = Watch(front)
    reply = exchange(front.gateway.port, get(path), timeout=3)
    assert status_of(reply.data) == 200, reply.data[:300]
    assert [r.path for r in watch.parsed] == [forwarded]
    watch.check()


def h2_attempt(front: SimpleNamespace, headers: list[tuple[bytes, bytes]], **kwargs) -> int | str:  # type: ignore[no-untyped-def]
    """The status an HTTP/2 request gets, or "reset" / "closed"."""
    context = client_context(front.ca.cert_file, ["h2"])
    with tls_connect(front.https_port, "api.example.test", context) as conn:
        client = H2Client(conn, raw=True)
        try:
            answer, _ = client.request(headers, **kwargs)
        except StreamReset:
            return "reset"
        except AssertionError:
            return "closed"
        # The connection still serves, and judges, its next stream.
        after, _ = client.request(H2Client.head("GET", "api.example.test", "/admin/x"))
        assert after[b":status"] == b"403"
        return int(answer[b":status"])


HOST = b"api.example.test"
# What each gets: 400 from the gateway, or "closed" where HTTP/2 itself finds the request malformed
# (mitmproxy's h2 layer ends the connection with PROTOCOL_ERROR, as RFC 9113 8.1.1 allows).
HTTP2_ATTACKS = {
    "CR LF in :path (a second request)": (
        H2Client.head("GET", HOST, b"/ HTTP/1.1\r\nHost: a\r\n\r\nGET /admin/secret HTTP/1.1\r\nX: X"),
        400,
    ),
    "CR LF in a value (an injected header)": (
        H2Client.head("GET", HOST, "/", (b"x-note", b"x\r\nX-User-Id: admin")),
        400,
    ),
    "bare LF in a value": (H2Client.head("GET", HOST, "/", (b"x-note", b"x\nX-User-Id: admin")), 400),
    "NUL in a value": (H2Client.head("GET", HOST, "/", (b"x-note", b"x\x00y")), 400),
    "CR LF in :method": (H2Client.head("GET /admin/secret HTTP/1.1\r\nX:", HOST, "/"), 400),
    "space in :path": (H2Client.head("GET", HOST, b"/open HTTP/1.1"), 400),
    "CR LF in :authority": (H2Client.head("GET", b"a\r\nX-User-Id: admin", "/"), "closed"),
    "host disagreeing with :authority": (H2Client.head("GET", HOST, "/", (b"host", b"other.test")), "closed"),
    "upgrade header": (H2Client.head("GET", HOST, "/", (b"upgrade", b"h2c")), "closed"),
}


@pytest.mark.parametrize("attack", list(HTTP2_ATTACKS))
def test_an_http2_request_an_http1_upstream_would_read_otherwise_is_refused(front, attack):
    watch = Watch(front)
    headers, expected = HTTP2_ATTACKS[attack]
    assert h2_attempt(front, headers) == expected
    watch.check(most=0)


@pytest.mark.parametrize("path", list(GUARDED_SPELLINGS))
def test_every_spelling_of_a_guarded_path_over_http2_is_judged_as_it(front, path):
    watch = Watch(front)
    assert h2_attempt(front, H2Client.head("GET", HOST, path)) == GUARDED_SPELLINGS[path]
    watch.check(most=0)


def test_http2_request_trailers_are_refused_cleanly(front):
    watch = Watch(front)
    headers = H2Client.head("POST", HOST, "/open", (b"content-length", b"5"))
    outcome = h2_attempt(front, headers, body=b"hello", trailers=[(b"x-checksum", b"1")])
    assert outcome == 400
    watch.check(most=0)


def test_http2_request_trailers_after_a_streamed_body_are_refused_cleanly(front):
    # Over 1 MiB the body streams upstream as it comes, so the trailers arrive after it went.
    body = b"x" * (3 << 20)
    headers = H2Client.head("POST", HOST, "/open", (b"content-length", str(len(body)).encode()))
    outcome = h2_attempt(front, headers, body=body, trailers=[(b"x-checksum", b"1")])
    assert outcome in (502, "reset"), outcome
    log = front.gateway.log()
    assert "has crashed" not in log and "Traceback" not in log, log[-3000:]
