"""proxy: send the request to a serviceEndpoint (round-robin over its urls); mitmproxy forwards it.

The step only rewrites the flow's destination, path and headers; mitmproxy's own connection
handling (lazy connections, keep-alive per client connection) does the forwarding.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Literal

from mitmproxy import http

from ..answers import BAD_REQUEST, GATEWAY_TIMEOUT, make_answer
from ..clients import peer_ip
from ..config.errors import ConfigError
from ..config.schema import non_negative, not_supported_yet, option, unknown
from ..context import RequestContext
from ..decision import Decision
from ..headers import (
    closes_connection,
    encode,
    header_value,
    header_values,
    host_header,
    set_headers,
    strip_hop_by_hop,
)
from ..ids import new_request_id
from ..mitm.injection import answer_as_upstream
from ..paths import has_dot_segment
from ..upstreams.endpoints import Upstream
from ..upstreams.health import UpstreamPool, UpstreamTarget
from ..upstreams.mirror import MirrorAction, MirrorTarget, build_mirror, parse_mirror
from .base import BuildContext, Policy, register_policy

logger = logging.getLogger(__name__)

REQUEST_ID = "X-Request-Id"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")


@dataclass(frozen=True)
class ProxyAction:
    service_endpoint: str = option("serviceEndpoint")
    change_origin: bool = option("changeOrigin", True)
    strip_path: bool = option("stripPath", False)
    strategy: Literal["round-robin"] = option("strategy", "round-robin")
    xfwd: bool = option("xfwd", True)
    prepend_path: bool = option("prependPath", True)
    ignore_path: bool = option("ignorePath", False)
    proxy_timeout: int = option("proxyTimeout", 60_000, parse=non_negative)
    """Milliseconds to wait for the upstream's response headers; 0 waits for ever."""
    timeout: None = option(
        "timeout", None, parse=not_supported_yet("the client-side timeout (proxyTimeout sets the upstream's)")
    )
    mirror: MirrorAction | None = option("mirror", None, parse=parse_mirror)
    """A second serviceEndpoint each request (or a share of them) is copied to once the primary
    has answered, and whose answers are compared with the primary's (upstreams/mirror.py)."""


def answer_upstream_timeout(flow: http.HTTPFlow) -> bool:
    """Answer 504 for an upstream that has not started its response in time (502 when it
    speaks TLS, see `answer_as_upstream`). mitmproxy has no per-request upstream timeout."""
    if flow.response is not None or flow.error is not None or not flow.live:
        return False
    status = answer_as_upstream(flow, 504, GATEWAY_TIMEOUT)
    if status is None:
        # Still connecting, or an HTTP/2 upstream: the operating system's timeouts apply.
        logger.warning(
            "upstream %s timed out; cannot answer 504 on this connection", flow.server_conn.address
        )
        return False
    Decision.of(flow).upstream_timed_out = True
    flow.comment += f"; upstream timed out, answered {status}"
    flow.marked = ":hourglass:"
    return True


@register_policy
class ProxyPolicy(Policy):
    name = "proxy"
    Action = ProxyAction

    def __init__(self, action: ProxyAction, build: BuildContext) -> None:
        self.action = action
        service = build.service_endpoints.get(action.service_endpoint)
        if service is None:
            raise ConfigError(
                build.path.key("serviceEndpoint"),
                unknown("serviceEndpoint", action.service_endpoint, build.service_endpoints, "declared"),
            )
        # One pool per serviceEndpoint, shared by the steps that use it and kept across reloads
        # that leave it as it is: its urls' health is the service's, not a step's.
        self.pool = build.state.get(("upstreams", service), lambda: UpstreamPool(service), build.used_state)
        self.timeout = action.proxy_timeout / 1000
        self.mirror = None
        if action.mirror is not None:
            where = build.path.key("mirror")
            self.mirror = build_mirror(action.mirror, build.service_endpoints, build.config_dir, where)
        self._mirror_turns = itertools.count()

    def forwarded_path(self, ctx: RequestContext, path: str, upstream: Upstream) -> str:
        if self.action.ignore_path:
            return upstream.base_path or "/"
        pattern = ctx.route.path_pattern
        prefix = pattern.prefix if self.action.strip_path and pattern is not None else ""
        if prefix and path[: len(prefix)].lower() == prefix.lower():
            path = path[len(prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        if self.action.prepend_path:
            path = upstream.base_path + path
        return path

    def handle(self, ctx: RequestContext) -> None:
        request = ctx.flow.request
        upstream = self.pool.pick()
        assert upstream is not None  # a serviceEndpoint has at least one url
        original_host, original_path = host_header(request), request.path
        if has_dot_segment(self.forwarded_path(ctx, original_path, upstream)):
            # stripPath cut mid-segment (pattern /api*, request /api../x): forwarded, that would
            # be another path than the one matched.
            ctx.decision.refusal = "stripPath left a dot-segment"
            ctx.answer(make_answer(request, 400, BAD_REQUEST))
            return
        ctx.routed = True
        ctx.decision.service_endpoint = self.action.service_endpoint
        ctx.decision.upstream = f"{upstream.host}:{upstream.port}"
        if not ctx.unsent:  # (a shadow config's decision: the request is never forwarded)
            self._forward(ctx, upstream, original_host, original_path)

    def _forward(
        self, ctx: RequestContext, upstream: Upstream, original_host: str | None, original_path: str
    ) -> None:
        """The request as the upstream gets it, and the answer as the client does."""
        request = ctx.flow.request
        # The front door kept Upgrade only on a WebSocket handshake.
        upgrading = ctx.decision.upgrade == "websocket"
        tokens = strip_hop_by_hop(request, upgrading)
        client_closes = closes_connection(request, tokens)

        def aim(upstream: Upstream) -> None:
            request.path = self.forwarded_path(ctx, original_path, upstream)
            request.scheme = upstream.scheme
            # Through `data`: the host and port setters each rewrite the Host header, set once here.
            request.data.host = upstream.host
            request.data.port = upstream.port
            request.host_header = upstream.authority if self.action.change_origin else original_host
            ctx.decision.upstream = f"{upstream.host}:{upstream.port}"  # (a retry aims again)

        aim(upstream)
        ctx.target = target = UpstreamTarget(self.pool, upstream, aim, ctx.decision)
        ctx.on_finish(target.settle)
        added: list[tuple[bytes, bytes]] = []
        if self.action.xfwd:
            forwarded = ctx.client.trusted_forwarded_for
            peer = peer_ip(ctx.flow)
            added.append((b"X-Forwarded-For", encode(f"{forwarded}, {peer}" if forwarded else peer)))
            added.append((b"X-Forwarded-Proto", b"https" if ctx.flow.client_conn.tls else b"http"))
            if original_host:
                added.append((b"X-Forwarded-Host", encode(original_host)))
        request_id = header_value(request, b"x-request-id")
        if request_id is None or not SAFE_REQUEST_ID.match(request_id):
            request_id = new_request_id()
            added.append((REQUEST_ID.encode(), request_id.encode()))
        if added:
            set_headers(request, tuple(added))
        ctx.decision.request_id = request_id
        if self.mirror is not None and not upgrading and self.mirror.sampled():
            ctx.mirror = self._mirror_target(ctx, original_path, original_host)

        def finish_response(response: http.Response) -> None:
            tokens = strip_hop_by_hop(response, upgrading and response.status_code == 101)
            # mitmproxy decides from these same headers whether to keep each side's connection
            # open: a close either side asked for must stay visible to it.
            if not upgrading and (client_closes or closes_connection(response, tokens)):
                set_headers(response, ((b"Connection", b"close"),))
            # The client can quote the id when it reports a problem.
            if not header_values(response, b"x-request-id"):
                set_headers(response, ((REQUEST_ID.encode(), request_id.encode()),))

        ctx.on_response(finish_response)
        if self.timeout:
            ctx.on_forward(lambda: self._start_timer(ctx))

    def _mirror_target(
        self, ctx: RequestContext, original_path: str, original_host: str | None
    ) -> MirrorTarget:
        assert self.mirror is not None
        urls = self.mirror.service.upstreams
        upstream = urls[next(self._mirror_turns) % len(urls)]  # round-robin, as for the primary
        host = upstream.authority if self.action.change_origin else original_host
        return MirrorTarget(self.mirror, upstream, self.forwarded_path(ctx, original_path, upstream), host)

    def _start_timer(self, ctx: RequestContext) -> None:
        # From the moment the whole request goes upstream, not from its headers: a slow upload
        # is the client's time, not the upstream's.
        flow, target = ctx.flow, ctx.target
        assert target is not None

        def timed_out() -> None:
            if answer_upstream_timeout(flow):
                target.pool.failed(target.upstream, "upstream timeout", target.decision, "proxyTimeout")

        timer = asyncio.get_running_loop().call_later(self.timeout, timed_out)
        ctx.on_finish(timer.cancel)
