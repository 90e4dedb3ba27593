"""Mirrors: a copy of each request a proxy step mirrors (its action's ``mirror:``) goes to the
mirror once the primary upstream's whole answer is in hand, and the two answers are compared
(upstreams/mirror.py says what counts as the same answer).

The primary never waits for a mirror: the copy leaves from a thread of its own (stdlib
http.client, one connection per copy) after the primary's ``response`` hook has handed its
answer on, and what comes back is only counted and shown. So a slow, failing or refusing mirror
changes nothing for the client. Each mirror has at most ``maxInFlight`` copies on their way;
one more is skipped, as is a request or an answer whose body is over ``maxBodyBytes`` or
streamed (never held), so a slow mirror costs bounded memory.

Results are counted in ``mitmgateway_mirror_total{service,result}`` (match, mismatch, error,
skipped) and written on the flow's decision (``mirror``). A mismatch is logged and, in mitmweb,
shown as a flow of its own (the copy and the mirror's answer, with the primary's request id,
``mirrorOf`` naming the primary flow); the primary flow's comment gets the result.

This addon comes before `ResponseSide`: the primary's answer it compares is the upstream's,
before the steps' edits (rate-limit headers, transformers).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from http import client as http_client
from typing import NamedTuple

from mitmproxy import connection, ctx, hooks, http

from ..bodies import BoundedCopy
from ..context import Exchanges
from ..decision import METADATA_KEY, Decision
from ..observe.access_log import redacted
from ..observe.metrics import GatewayMetrics
from ..upstreams.mirror import MirrorSpec, MirrorTarget

logger = logging.getLogger("mitmgateway")

MISMATCH_MARKER = ":twisted_rightwards_arrows:"
_REPLACED_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding", b"cookie"})
"""Fields of the forwarded request the copy carries its own of (its Host, its length, its one
Cookie)."""


class _Primary(NamedTuple):
    target: MirrorTarget
    status: int
    headers: http.Headers
    """The upstream's, before the response side changed them."""


class _Copy(NamedTuple):
    method: str
    path: str
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes


def copy_of(request: http.Request, target: MirrorTarget, body: bytes) -> _Copy:
    """The forwarded request as the mirror gets it, over HTTP/1.1 as the primary's upstream does."""
    fields = [(n, v) for n, v in request.headers.fields if n.lower() not in _REPLACED_FIELDS]
    if target.host:
        fields.insert(0, (b"Host", target.host.encode("utf-8", "surrogateescape")))
    if cookies := [v for n, v in request.headers.fields if n.lower() == b"cookie"]:
        # HTTP/2 sends a cookie in crumbs, HTTP/1 in one field: mitmproxy joins them so for an
        # HTTP/1 upstream, and the mirror must parse what the primary did.
        fields.append((b"Cookie", b"; ".join(cookies)))
    if body or request.method in ("POST", "PUT", "PATCH"):
        fields.append((b"Content-Length", str(len(body)).encode()))
    return _Copy(request.method, target.path, tuple(fields), body)


class _Exchange:
    """One copy on its way, from a worker thread: the mirror's answer and what differs from the
    primary's. The addon can cut it short (its deadline passed, the gateway stops): its socket is
    shut, which ends whatever the thread waits for."""

    def __init__(self, target: MirrorTarget, copy: _Copy, primary: http.Response) -> None:
        self.target = target
        self.copy = copy
        self.primary = primary
        self._connection: http_client.HTTPConnection | None = None
        self.cut = False

    def run(self) -> tuple[http.Response, str | None]:
        upstream, spec = self.target.upstream, self.target.spec
        timeout, limit = spec.action.timeout / 1000, spec.action.max_body_bytes
        if upstream.scheme == "https":
            conn: http_client.HTTPConnection = http_client.HTTPSConnection(
                upstream.host, upstream.port, timeout=timeout, context=spec.tls
            )
        else:
            conn = http_client.HTTPConnection(upstream.host, upstream.port, timeout=timeout)
        self._connection = conn
        started = time.time()
        try:
            conn.connect()
            if self.cut:  # (cut before its socket was there to shut)
                raise TimeoutError
            copy = self.copy
            # Built field by field from the forwarded request, as the primary's was (the front
            # door refused CR, LF and NUL in all of them; http.client checks line breaks again).
            conn.putrequest(copy.method, copy.path, skip_host=True, skip_accept_encoding=True)
            for name, value in copy.fields:
                conn.putheader(name, value)
            conn.endheaders(copy.body or None)
            answer = conn.getresponse()
            # Up to one byte over the limit: a larger body is known to be larger, never held.
            body = b""
            while len(body) <= limit and (chunk := answer.read1(limit + 1 - len(body))):
                body += chunk
            if self.cut:  # (a shut socket reads as the answer's end)
                raise TimeoutError
        except OSError:
            if self.cut:
                raise TimeoutError from None
            raise
        finally:
            conn.close()
        fields = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.getheaders())
        version = b"HTTP/1.1" if answer.version == 11 else b"HTTP/1.0"
        mirrored = http.Response(
            version, answer.status, answer.reason.encode("latin-1"), fields, body, None, started, time.time()
        )
        if len(body) > limit:
            return mirrored, "the mirror's body is over maxBodyBytes"
        return mirrored, spec.differs(self.primary, mirrored)

    def abort(self) -> None:
        self.cut = True
        conn = self._connection
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def _answer_body(response: http.Response | None) -> bytes | None:
    """The primary's answer body: as held, or the copy kept while it streamed through."""
    if response is None:
        return None
    if isinstance(response.stream, BoundedCopy):
        return response.stream.body
    return None if response.stream else response.raw_content


def _why_not_sent(flow: http.HTTPFlow, limit: int) -> str | None:
    request = flow.request
    if request.stream or request.raw_content is None:
        return "request body streamed"
    if len(request.raw_content) > limit:
        return "request body over maxBodyBytes"
    body = _answer_body(flow.response)
    if body is None or len(body) > limit:  # (a copy of a streamed one is dropped past the limit)
        return "answer body over maxBodyBytes"
    return None


class Mirrors:
    MAX_THREADS = 32
    """Threads for all mirrors together; each mirror's maxInFlight bounds its own share."""

    def __init__(self, exchanges: Exchanges, metrics: GatewayMetrics) -> None:
        self.exchanges = exchanges
        self.metrics = metrics
        self._primaries: weakref.WeakKeyDictionary[http.HTTPFlow, _Primary] = weakref.WeakKeyDictionary()
        self._in_flight: collections.Counter[MirrorSpec] = collections.Counter()
        """Copies on their way, by mirror (a step's; each has its own maxInFlight)."""
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._exchanges: set[_Exchange] = set()
        self._failing: set[str] = set()
        """Mirrors whose last copy got no answer: said once, not for every copy."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        context = self.exchanges.get(flow)
        if context is None or (target := context.mirror) is None or flow.response is None:
            return
        decision = context.decision
        if decision.answered_by is not None or decision.upstream_timed_out:
            # The gateway answered (a step after the proxy step, scopes, the upstream's
            # timeout): a request it refused goes nowhere, the mirror included.
            return
        response = flow.response
        self._primaries[flow] = _Primary(target, response.status_code, response.headers.copy())

    def response(self, flow: http.HTTPFlow) -> None:
        primary = self._primaries.pop(flow, None)
        if primary is None:
            return
        target = primary.target
        spec = target.spec
        if (reason := _why_not_sent(flow, spec.action.max_body_bytes)) is not None:
            self._count(flow, target, "skipped", reason)
            return
        if self._in_flight[spec] >= spec.action.max_in_flight:
            self._count(flow, target, "skipped", "busy")
            return
        assert flow.response is not None and flow.request.raw_content is not None
        answer = flow.response
        upstream_answer = http.Response(
            answer.http_version.encode(),
            primary.status,
            b"",
            primary.headers,
            _answer_body(answer),
            None,
            answer.timestamp_start,
            answer.timestamp_end,
        )
        copy = copy_of(flow.request, target, flow.request.raw_content)
        self._in_flight[spec] += 1
        task = asyncio.get_running_loop().create_task(
            self._mirror(flow, _Exchange(target, copy, upstream_answer))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def error(self, flow: http.HTTPFlow) -> None:
        self._primaries.pop(flow, None)

    def done(self) -> None:
        for task in self._tasks:
            task.cancel()
        for exchange in self._exchanges:  # their threads end now, not at their timeouts
            exchange.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _mirror(self, flow: http.HTTPFlow, exchange: _Exchange) -> None:
        target = exchange.target
        spec = target.spec
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.MAX_THREADS, thread_name_prefix="mirror")
        loop = asyncio.get_running_loop()
        # The whole exchange within the timeout, from the moment the copy leaves (a mirror that
        # answers a byte at a time holds no thread for longer).
        deadline = loop.call_later(spec.action.timeout / 1000, exchange.abort)
        self._exchanges.add(exchange)
        try:
            # Compared in the thread too: decoding and walking two bodies is no work for the loop.
            answer, difference = await loop.run_in_executor(self._executor, exchange.run)
        except Exception as e:  # whatever becomes of a copy is the mirror's, never the primary's
            if exchange.cut:
                reason = "no answer within its timeout"
            else:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._count(flow, target, "error", reason)
            await self._shown(flow)
            return
        finally:
            deadline.cancel()
            self._exchanges.discard(exchange)
            self._in_flight[spec] -= 1
            if not self._in_flight[spec]:
                del self._in_flight[spec]
        if difference is None:
            self._count(flow, target, "match", None)
            return
        self._count(flow, target, "mismatch", difference)
        self._show(flow, target, exchange.copy, answer, difference)
        await self._shown(flow)

    async def _shown(self, flow: http.HTTPFlow) -> None:
        """mitmweb shows the primary flow's new comment (nothing shows flows elsewhere)."""
        if ctx.master.addons.get("view") is not None:
            await ctx.master.addons.trigger_event(hooks.UpdateHook([flow]))

    def _count(self, flow: http.HTTPFlow, target: MirrorTarget, result: str, reason: str | None) -> None:
        service = target.spec.name
        self.metrics.mirrored(service, result).inc()
        Decision.of(flow).mirror = {"service": service, "result": result, "reason": reason}
        if result != "match":
            flow.comment += f"; mirror {service}: {result}" + (f" ({reason})" if reason else "")
        if result == "error" and service not in self._failing:
            self._failing.add(service)
            logger.warning(
                "mirror %s gives no answer (%s); counted in mitmgateway_mirror_total", service, reason
            )
        elif result in ("match", "mismatch") and service in self._failing:
            self._failing.discard(service)
            logger.info("mirror %s answers again", service)

    def _show(
        self, flow: http.HTTPFlow, target: MirrorTarget, copy: _Copy, answer: http.Response, difference: str
    ) -> None:
        decision = Decision.of(flow)
        upstream = target.upstream
        logger.info(
            "mirror %s differs on %s %s (request id %s): %s",
            target.spec.name,
            copy.method,
            redacted(copy.path, decision.secret_query_params) if decision.secret_query_params else copy.path,
            decision.request_id,
            difference,
        )
        view = ctx.master.addons.get("view")
        if view is None:  # mitmdump, the lean runner: the log line is all
            return
        server = connection.Server(address=(upstream.host, upstream.port))
        mirrored = http.HTTPFlow(flow.client_conn, server)
        mirrored.request = http.Request(
            upstream.host,
            upstream.port,
            copy.method.encode(),
            upstream.scheme.encode(),
            b"",
            copy.path.encode(),
            b"HTTP/1.1",
            http.Headers(copy.fields),
            copy.body,
            None,
            answer.timestamp_start,
            answer.timestamp_start,
        )
        mirrored.response = answer
        shown = Decision(mirrored.metadata.setdefault(METADATA_KEY, {}))
        shown.mirror_of, shown.request_id = flow.id, decision.request_id
        shown.service_endpoint, shown.mirror = target.spec.name, decision.mirror
        mirrored.comment = f"mirror {target.spec.name} of {copy.method} {flow.request.path}: {difference}"
        mirrored.marked = MISMATCH_MARKER
        view.add([mirrored])
