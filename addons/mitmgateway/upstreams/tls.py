"""HTTPS upstreams: which certificate authorities a serviceEndpoint's certificate is checked against.

mitmproxy verifies every upstream certificate (name and chain) unless ``ssl_insecure`` is on,
which the gateway refuses: against certifi's CA bundle by default, and here against the system's
CAs (`system_ca_bundle`), which is what an operator adds an internal CA to. A serviceEndpoint
behind a private CA may also name it as Express Gateway does, in the options it passes to
node-http-proxy::

    serviceEndpoints:
      billing:
        url: https://billing.internal:8443
        proxyOptions:
          target:
            caFile: certs/internal-ca.pem

As with node's ``ca``, the file replaces the default CAs for that upstream (host and port).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL

from ..config.errors import ConfigError, KeyPath
from ..config.schema import check_type, check_unknown_keys, require_mapping


@dataclass(frozen=True)
class ProxyOptions:
    """The part of EG's serviceEndpoint proxyOptions the gateway implements."""

    ca_file: str | None = None


def parse_proxy_options(raw: Any, path: KeyPath) -> ProxyOptions:
    raw = require_mapping(raw, path)
    check_unknown_keys(raw, ("secure", "target"), path)
    if "secure" in raw and not check_type(bool, raw["secure"], path.key("secure")):
        raise ConfigError(
            path.key("secure"),
            "false would accept any upstream certificate, which the gateway refuses; "
            "give target.caFile to trust a private CA",
        )
    target_path = path.key("target")
    target = require_mapping(raw.get("target"), target_path)
    check_unknown_keys(target, ("caFile", "keyFile", "certFile"), target_path)
    for key in ("keyFile", "certFile"):
        if key in target:
            raise ConfigError(target_path.key(key), "client certificates to upstreams are not supported yet")
    ca_file = target.get("caFile")
    return ProxyOptions(None if ca_file is None else check_type(str, ca_file, target_path.key("caFile")))


@dataclass(frozen=True)
class UpstreamTrust:
    """For each upstream (host, port) with its own CAs, an OpenSSL context holding them."""

    contexts: Mapping[tuple[str, int], SSL.Context]
    files: tuple[Path, ...] = ()

    def context_for(self, address: tuple[str, int] | None) -> SSL.Context | None:
        return self.contexts.get(address) if address is not None and self.contexts else None


def trust_context(file: Path, path: KeyPath) -> SSL.Context:
    try:
        pem = file.read_bytes()
    except OSError as e:
        raise ConfigError(path, f"cannot read {file}: {e.strerror or e}") from None
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(path, f"{file} holds no PEM certificate ({e})") from None
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # Read here, once: the connection only borrows the store (see Listeners.tls_start_server).
    context.load_verify_locations(str(file))
    return context


def system_ca_bundle() -> str | None:
    """The operating system's CA bundle (as OpenSSL finds it, SSL_CERT_FILE included), if any."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None
