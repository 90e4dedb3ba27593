"""The config model: every section of gateway.config.yml as a frozen dataclass, and
`GatewayConfig`, the whole compiled config that is swapped in at once (config/assemble.py
builds it)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..bodies import STREAM_BODIES_OVER
from ..clients import ClientResolver
from ..consumers import ConsumerDirectory, Consumers
from ..https import HttpsListener
from ..paths import PathRules
from ..pipeline import Pipeline
from ..routing import Router
from ..upstreams.endpoints import ServiceEndpoint
from ..upstreams.tls import UpstreamTrust
from .errors import ConfigError, KeyPath
from .schema import (
    byte_size,
    describe,
    header_name,
    non_negative,
    option,
    positive,
    require_mapping,
    tcp_port,
)


@dataclass(frozen=True)
class HttpListener:
    port: int = option("port", parse=tcp_port)
    hostname: str | None = option("hostname", None)


@dataclass(frozen=True)
class AdminListener:
    """Where /metrics, /health, /ready and the admin API are served (EG's admin section; EG
    spells it `host`)."""

    port: int = option("port", parse=tcp_port)
    host: str = option("host", "127.0.0.1")
    hostname: str | None = option("hostname", None)
    token_hash: str | None = option("tokenHash", None)
    """The admin API's credential, as ``mitmgateway admin-token`` prints it (sha256:HEX)."""

    @property
    def address(self) -> str:
        return self.hostname or self.host


@dataclass(frozen=True)
class AccessLogSettings:
    path: str = option("path")
    """A file (relative to the config file's folder), or '-' for standard output."""


@dataclass(frozen=True)
class ErrorSettings:
    """The shape of the gateway's own answers: EG's text (or JSON on request), or always JSON."""

    format: Literal["text", "json"] = option("format", "text")


@dataclass(frozen=True)
class RequestLimits:
    """What one client request may take (``limits``); defaults are Node's, hence Express Gateway's.

    A size of 0 means no limit.
    """

    max_header_bytes: int = option("maxHeaderBytes", 16 << 10, parse=byte_size)
    """The request line and headers: 431 beyond."""
    max_body_bytes: int = option("maxBodyBytes", 0, parse=byte_size)
    """Any request body: 413 beyond. Bodies stream through, so none is held whole in memory..."""
    max_buffered_body_bytes: int = option("maxBufferedBodyBytes", 10 << 20, parse=byte_size)
    """...except for a step that needs the whole body (a body transformer, the cache): 413 beyond."""
    headers_timeout_ms: int = option("headersTimeoutMs", 60_000, parse=non_negative)
    """From the first byte of a request to the end of its headers: 408 beyond (slow clients)."""

    @functools.cached_property
    def held_body_bytes(self) -> int:
        """The most a request body held in memory (not streamed) may take; 0 for no limit."""
        return min((s for s in (self.max_body_bytes, self.max_buffered_body_bytes) if s), default=0)

    @functools.cached_property
    def stream_bodies_over(self) -> int:
        """Bodies larger than this pass through as they come (unless a step needs them whole)."""
        return min(STREAM_BODIES_OVER, self.held_body_bytes or STREAM_BODIES_OVER)


def _otlp_endpoint(value: Any, path: KeyPath) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"must be a url, got {describe(value)}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            path, f"must be an OTLP/HTTP url such as http://127.0.0.1:4318/v1/traces, got {value!r}"
        )
    return value


def _ratio(value: Any, path: KeyPath) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(path, f"must be a number from 0 to 1, got {describe(value)}")
    return float(value)


def _header_values(value: Any, path: KeyPath) -> tuple[tuple[str, str], ...]:
    headers = require_mapping(value, path)
    for name, header in headers.items():
        header_name(name, path.key(name))
        if not isinstance(header, str):
            raise ConfigError(path.key(name), f"must be a string, got {describe(header)}")
    return tuple(headers.items())


@dataclass(frozen=True)
class TracingSettings:
    """``tracing`` (ours): each request's spans, sent to an OpenTelemetry collector (OTLP/HTTP)."""

    endpoint: str = option("endpoint", parse=_otlp_endpoint)
    """The collector's traces url, e.g. ``http://127.0.0.1:4318/v1/traces``."""
    service_name: str = option("serviceName", "mitmgateway")
    sample_ratio: float = option("sampleRatio", 1.0, parse=_ratio)
    """Of the traces the gateway starts; a client's sampled traceparent is always followed."""
    headers: tuple[tuple[str, str], ...] = option("headers", (), parse=_header_values)
    """Sent with each export (a collector's API key, say)."""
    max_queue_size: int = option("maxQueueSize", 2048, parse=positive)
    """Spans waiting to be sent: beyond, the oldest are dropped (and counted)."""
    export_timeout_ms: int = option("exportTimeoutMs", 10_000, parse=positive)


@dataclass(frozen=True)
class GatewayConfig:
    file: Path
    http: HttpListener | None
    router: Router
    clients: ClientResolver
    service_endpoints: Mapping[str, ServiceEndpoint]
    pipelines: Mapping[str, Pipeline]
    used_state: frozenset[Any]
    """The `StepState` keys this config's steps hold, so the rest can be dropped on swap."""
    admin: AdminListener | None = None
    access_log: Path | None = None
    """None: no access log; Path('-'): standard output."""
    consumers: ConsumerDirectory = Consumers()
    json_errors: bool = False
    limits: RequestLimits = RequestLimits()
    path_rules: PathRules = PathRules()
    watched_files: tuple[Path, ...] = ()
    """Every file this config was read from: a change to any of them reloads it."""
    https: HttpsListener | None = None
    upstream_trust: UpstreamTrust = UpstreamTrust({})
    tracing: TracingSettings | None = None

    @property
    def listeners(self) -> list[str]:
        """Where it listens, as URLs (``*`` for every interface)."""
        listeners = [f"http://{self.http.hostname or '*'}:{self.http.port}"] if self.http else []
        if self.https is not None:
            listeners.append(f"https://{self.https.hostname or '*'}:{self.https.port}")
        return listeners

    @property
    def summary(self) -> str:
        """What this config serves, in one line (the startup log's)."""
        listeners = self.listeners
        endpoints = len({name for name, _, _ in self.router.endpoints})
        return (
            f"{', '.join(listeners)}; {_count(endpoints, 'apiEndpoint')} → "
            f"{_count(len(self.pipelines), 'pipeline')} "
            f"({', '.join(self.pipelines)}); serviceEndpoints {', '.join(self.service_endpoints) or 'none'}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
