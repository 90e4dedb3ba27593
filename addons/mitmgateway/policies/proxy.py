"""proxy: send the request to a serviceEndpoint (round-robin over its urls); mitmproxy forwards it.

The step only rewrites the flow's destination, path and headers; mitmproxy's own connection
handling (lazy connections, keep-alive per client connection) does the forwarding.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Literal

from mitmproxy import http

from ..clients import peer_ip
from ..config.errors import ConfigError
from ..config.schema import not_supported_yet, option
from ..pipeline import RequestContext
from ..upstreams import Upstream
from .base import BuildContext, Policy, register_policy

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
)
REQUEST_ID = "X-Request-Id"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")


def strip_hop_by_hop(message: http.Message, *, upgrading: bool) -> None:
    headers = message.headers
    named = [n.strip() for v in headers.get_all("connection") for n in v.split(",")]
    for name in (*HOP_BY_HOP, *named):
        # A WebSocket handshake needs Connection/Upgrade to reach the other side.
        if upgrading and name.lower() in ("connection", "upgrade"):
            continue
        if name:
            headers.pop(name, None)


def is_upgrade(message: http.Message) -> bool:
    return "upgrade" in message.headers.get("connection", "").lower()


@dataclass(frozen=True)
class ProxyAction:
    service_endpoint: str = option("serviceEndpoint")
    change_origin: bool = option("changeOrigin", True)
    strip_path: bool = option("stripPath", False)
    strategy: Literal["round-robin"] = option("strategy", "round-robin")
    xfwd: bool = option("xfwd", True)
    prepend_path: bool = option("prependPath", True)
    ignore_path: bool = option("ignorePath", False)
    timeout: None = option("timeout", None, parse=not_supported_yet("an upstream timeout"))
    proxy_timeout: None = option("proxyTimeout", None, parse=not_supported_yet("an upstream timeout"))


@register_policy
class ProxyPolicy(Policy):
    name = "proxy"
    Action = ProxyAction

    def __init__(self, action: ProxyAction, build: BuildContext) -> None:
        self.action = action
        service = build.service_endpoints.get(action.service_endpoint)
        if service is None:
            known = ", ".join(build.service_endpoints) or "none"
            raise ConfigError(
                build.path.key("serviceEndpoint"),
                f"unknown serviceEndpoint {action.service_endpoint!r} (declared: {known})",
            )
        self.upstreams = itertools.cycle(service.upstreams)

    def forwarded_path(self, ctx: RequestContext, upstream: Upstream) -> str:
        path = ctx.flow.request.path
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
        upstream = next(self.upstreams)
        original_host = request.host_header
        upgrading = is_upgrade(request)
        strip_hop_by_hop(request, upgrading=upgrading)
        request.path = self.forwarded_path(ctx, upstream)
        request.scheme = upstream.scheme
        request.host = upstream.host
        request.port = upstream.port
        request.host_header = upstream.authority if self.action.change_origin else original_host
        headers = request.headers
        if self.action.xfwd:
            forwarded = ctx.client.trusted_forwarded_for
            peer = peer_ip(ctx.flow)
            headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
            headers["X-Forwarded-Proto"] = "https" if ctx.flow.client_conn.tls else "http"
            if original_host:
                headers["X-Forwarded-Host"] = original_host
        request_id = headers.get(REQUEST_ID)
        if request_id is None or not SAFE_REQUEST_ID.match(request_id):
            headers[REQUEST_ID] = uuid.uuid4().hex
        ctx.routed = True
        ctx.on_response(lambda response: strip_hop_by_hop(response, upgrading=upgrading))
