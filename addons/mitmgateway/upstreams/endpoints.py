"""serviceEndpoints: the upstream URLs a proxy step forwards to, parsed once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL

from ..config.errors import ConfigError, KeyPath
from ..config.schema import check_type, option, parse_fields, positive
from .pool import PoolSettings
from .tls import ProxyOptions, UpstreamTrust, parse_proxy_options, trust_context


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str
    """The URL's path without its trailing slash ('' for none), prepended to forwarded paths."""

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_upstream_url(value: Any, path: KeyPath) -> Upstream:
    text = check_type(str, value, path)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ConfigError(path, f"invalid URL {text!r}: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"must be an http:// or https:// URL with a host, got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigError(path, f"must not carry a query or fragment, got {text!r}")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ConfigError(path, f"invalid host name {parts.hostname!r}: {e}") from e
    return Upstream(parts.scheme, host, port or default_port, parts.path.rstrip("/"))


def _urls(value: Any, path: KeyPath) -> tuple[Upstream, ...]:
    items = check_type(tuple[str, ...], value, path)
    if not items:
        raise ConfigError(path, "must list at least one URL")
    return tuple(parse_upstream_url(u, path.index(i)) for i, u in enumerate(items))


@dataclass(frozen=True)
class HealthCheck:
    """Passive health checking of a serviceEndpoint's urls (``healthCheck``), from real traffic."""

    max_failures: int = option("maxFailures", 1, parse=positive)
    """Consecutive failures (refused, connect timeout, upstream timeout) that take a url out."""
    cool_down_ms: int = option("coolDownMs", 10_000, parse=positive)
    """How long a url stays out of the rotation before a request tries it again."""
    connect_timeout_ms: int = option("connectTimeoutMs", 3_000, parse=positive)
    """With several urls: a connection not made in this time is a failure, retried elsewhere."""


def _health_check(value: Any, path: KeyPath) -> HealthCheck:
    return parse_fields(HealthCheck, value, path)


@dataclass(frozen=True)
class _ServiceEndpointFields:
    url: Upstream | None = option("url", None, parse=parse_upstream_url)
    urls: tuple[Upstream, ...] | None = option("urls", None, parse=_urls)
    proxy_options: ProxyOptions = option("proxyOptions", ProxyOptions(), parse=parse_proxy_options)
    health_check: HealthCheck = option("healthCheck", HealthCheck(), parse=_health_check)
    pool: PoolSettings = option("pool", PoolSettings(), parse=lambda v, p: parse_fields(PoolSettings, v, p))


@dataclass(frozen=True)
class ServiceEndpoint:
    name: str
    upstreams: tuple[Upstream, ...]
    health_check: HealthCheck = HealthCheck()
    ca_file: str | None = None
    """proxyOptions.target.caFile, relative to the config file (see tls.py)."""
    pool: PoolSettings = PoolSettings()


def parse_service_endpoint(name: str, raw: Any, path: KeyPath) -> ServiceEndpoint:
    fields = parse_fields(_ServiceEndpointFields, raw, path)
    if (fields.url is None) == (fields.urls is None):
        raise ConfigError(path, "give either url or urls")
    upstreams = (fields.url,) if fields.url else fields.urls or ()
    return ServiceEndpoint(name, upstreams, fields.health_check, fields.proxy_options.ca_file, fields.pool)


def build_upstream_trust(
    services: Mapping[str, ServiceEndpoint], config_dir: Path, services_path: KeyPath
) -> UpstreamTrust:
    contexts: dict[tuple[str, int], SSL.Context] = {}
    owners: dict[tuple[str, int], tuple[str, Path]] = {}
    files = []
    for name, service in services.items():
        if service.ca_file is None:
            continue
        path = services_path.key(name).key("proxyOptions").key("target").key("caFile")
        file = config_dir / service.ca_file
        https = [(u.host, u.port) for u in service.upstreams if u.scheme == "https"]
        if not https:
            raise ConfigError(path, "applies to https:// upstreams, and this serviceEndpoint has none")
        context = trust_context(file, path)
        files.append(file)
        for address in https:
            owner = owners.setdefault(address, (name, file))
            if owner[1] != file:
                raise ConfigError(
                    path,
                    f"{address[0]}:{address[1]} is also an upstream of serviceEndpoint {owner[0]!r}, "
                    f"with caFile {owner[1]}: one upstream, one caFile",
                )
            contexts[address] = context
    return UpstreamTrust(contexts, tuple(files))
