"""The https listener: Express Gateway's ``https: {port, hostname, tls: {HOSTNAME: {key, cert}}}``.

TLS is mitmproxy's own: the user's certificates go into mitmproxy's ``certs`` option (one PEM
file per certificate holding its key and chain, which is the format that option reads), and
mitmproxy picks one by the client's SNI as it does for any certificate given to it. What the
gateway adds is a refusal: a client must never be handed a certificate minted by mitmproxy's CA,
neither on the https port for a name no certificate covers nor on the plain http port (where
mitmproxy's reverse mode would otherwise detect a TLS ClientHello and answer it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs
from OpenSSL import SSL

from .client_certificates import ClientAuth, parse_client_auth
from .config.errors import ConfigError, KeyPath
from .config.schema import check_type, check_unknown_keys, require_list, require_mapping, tcp_port

logger = logging.getLogger("mitmgateway")

DEFAULT = "default"
"""EG's name for the certificate served when no other matches the client's SNI."""
# A host name, or a wildcard for one more label, as EG's tls section names them.
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}\Z", re.IGNORECASE)


@dataclass(frozen=True)
class ServedCertificate:
    name: str
    """The tls key: a host name, ``*.example.com``, or ``default``."""
    pem: bytes
    """The private key and the certificate chain, unencrypted: what mitmproxy's ``certs`` reads."""
    names: frozenset[str]
    """The names mitmproxy files it under: the tls key, and the certificate's CN and SANs."""
    files: tuple[Path, ...]
    """Where the key, the certificate and the CAs were read from: renewing one reloads the config."""
    cas: tuple[x509.Certificate, ...] = ()
    """``ca``: those client certificates are verified against (with ``options.requestCert``)."""

    @property
    def mitmproxy_spec(self) -> str:
        """The name as mitmproxy's ``certs`` option spells it: ``*`` for the default."""
        return "*" if self.name == DEFAULT else self.name.lower()


@dataclass(frozen=True)
class HttpsListener:
    port: int
    hostname: str | None
    certificates: tuple[ServedCertificate, ...]
    client_auth: ClientAuth | None = None
    """``options.requestCert``: client certificates asked for and verified."""

    # Consulted on every handshake: worked out once (a frozen dataclass takes cached properties).
    @functools.cached_property
    def has_default(self) -> bool:
        return any(c.name == DEFAULT for c in self.certificates)

    @functools.cached_property
    def _lookup_names(self) -> frozenset[str]:
        return frozenset().union(*(c.names for c in self.certificates))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.certificates)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for c in self.certificates for f in c.files)

    def serves(self, sni: str | None, local_address: str) -> bool:
        """Whether mitmproxy's certificate store holds one of these certificates for a client
        asking for `sni`: the same lookup (the name, then its wildcard forms; the local address
        without SNI), so that a name it would mint a certificate for is known beforehand."""
        if self.has_default:
            return True
        forms = certs.CertStore.asterisk_forms(sni) if sni else [local_address]
        return not self._lookup_names.isdisjoint(forms)


def _read(file_value: Any, path: KeyPath, config_dir: Path) -> tuple[Path, bytes]:
    file = config_dir / check_type(str, file_value, path)
    try:
        return file, file.read_bytes()
    except OSError as e:
        raise ConfigError(path, f"cannot read {file}: {e.strerror or e}") from None


def _certificates(file_value: Any, path: KeyPath, config_dir: Path) -> tuple[Path, list[x509.Certificate]]:
    """A PEM file of one or more certificates."""
    file, pem = _read(file_value, path, config_dir)
    try:
        return file, x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(path, f"{file} holds no PEM certificate ({e})") from None


def _cas(
    value: Any, path: KeyPath, config_dir: Path
) -> tuple[tuple[x509.Certificate, ...], tuple[Path, ...]]:
    """A tls entry's ``ca``: PEM files (a path or a list of them), each of one or more CAs."""
    read = (
        [_certificates(value, path, config_dir)]
        if isinstance(value, str)
        else [_certificates(v, path.index(i), config_dir) for i, v in enumerate(require_list(value, path))]
    )
    return tuple(ca for _, cas in read for ca in cas), tuple(file for file, _ in read)


def parse_certificate(name: str, raw: Any, path: KeyPath, config_dir: Path) -> ServedCertificate:
    raw = require_mapping(raw, path)
    check_unknown_keys(raw, ("key", "cert", "ca"), path)
    for key in ("key", "cert"):
        if key not in raw:
            raise ConfigError(path.key(key), "is required: a PEM file (relative to the config file)")
    key_file, key_pem = _read(raw["key"], path.key("key"), config_dir)
    cert_file, chain = _certificates(raw["cert"], path.key("cert"), config_dir)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            path.key("key"), f"{key_file} is encrypted: give the key without a passphrase"
        ) from None
    except ValueError as e:
        raise ConfigError(path.key("key"), f"{key_file} holds no PEM private key ({e})") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, public) != key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise ConfigError(path.key("cert"), f"{cert_file} is not the certificate of the key in {key_file}")
    if leaf.not_valid_after_utc < datetime.now(UTC):
        # Served anyway (clients refuse it, which shows where the problem is), but said at load.
        logger.warning("%s: the certificate in %s expired on %s", path, cert_file, leaf.not_valid_after_utc)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    filed_as = certs.Cert(leaf)
    names = {name.lower(), *(str(n.value) for n in filed_as.altnames)}
    if filed_as.cn:
        names.add(filed_as.cn)
    cas, ca_files = _cas(raw["ca"], path.key("ca"), config_dir) if "ca" in raw else ((), ())
    return ServedCertificate(name, pem, frozenset(names), (key_file, cert_file, *ca_files), cas)


def parse_https(raw: Any, path: KeyPath, config_dir: Path) -> HttpsListener:
    raw = require_mapping(raw, path)
    check_unknown_keys(raw, ("port", "hostname", "tls", "options"), path)
    if "port" not in raw:
        raise ConfigError(path.key("port"), "is required: the port the gateway serves HTTPS on")
    port = tcp_port(raw["port"], path.key("port"))
    hostname = check_type(str | None, raw.get("hostname"), path.key("hostname"))
    tls_path = path.key("tls")
    tls = require_mapping(raw.get("tls"), tls_path)
    if not tls:
        raise ConfigError(tls_path, "must name at least one certificate: {HOSTNAME: {key: FILE, cert: FILE}}")
    certificates = []
    for name, entry in tls.items():
        name = str(name)
        if name != DEFAULT and not _HOSTNAME.match(name):
            raise ConfigError(
                tls_path.key(name), "must be a host name, a wildcard like *.example.com, or default"
            )
        certificates.append(parse_certificate(name, entry, tls_path.key(name), config_dir))
    # Node merges the ca of every entry into one trust: so does this.
    cas = tuple(ca for c in certificates for ca in c.cas)
    client_auth = parse_client_auth(raw.get("options"), cas, path.key("options"))
    return HttpsListener(port, hostname, tuple(certificates), client_auth)


def certs_order(certificates: tuple[ServedCertificate, ...]) -> list[ServedCertificate]:
    """The order to hand certificates to mitmproxy: the default first, then wildcards, then exact
    names. mitmproxy also files each certificate under the names it holds (CN, SANs), a later one
    replacing an earlier one's: this way a name the config gives explicitly keeps its certificate.
    """
    return sorted(certificates, key=lambda c: 0 if c.name == DEFAULT else 1 if c.name.startswith("*.") else 2)


class CertificateFiles:
    """The PEM files mitmproxy's ``certs`` option points at, in a folder only this user can read.

    mitmproxy reads a file when the option is set, and again when it builds a TLS context for it
    (the chain), so a file stays until the option no longer names it. Files are named by their
    content: a reload that changes nothing rewrites nothing.
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._written: set[Path] = set()
        self._current: set[Path] = set()

    def specs(self, certificates: tuple[ServedCertificate, ...]) -> list[str]:
        """Write what is missing and return the ``certs`` option's value for `certificates`."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="mitmgateway-certs-"))  # mode 0700
        specs, files = [], set()
        for certificate in certs_order(certificates):
            file = self._folder / f"{hashlib.sha256(certificate.pem).hexdigest()[:32]}.pem"
            if file not in self._written:
                with open(file, "xb", opener=_private_opener) as f:
                    f.write(certificate.pem)
                self._written.add(file)
            files.add(file)
            specs.append(f"{certificate.mitmproxy_spec}={file}")
        self._current = files
        return specs

    def forget_stale(self) -> None:
        """Remove the files of certificates no longer configured, once mitmproxy has let go."""
        for file in self._written - self._current:
            with contextlib.suppress(OSError):
                file.unlink()
        self._written &= self._current

    def remove_all(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            self._written, self._current = set(), set()


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


_refusing_context: SSL.Context | None = None


def refusing_connection() -> SSL.Connection:
    """A server-side TLS connection without any certificate: the handshake fails with an alert
    (handshake_failure) instead of presenting a certificate the client was not meant to get."""
    global _refusing_context
    if _refusing_context is None:
        _refusing_context = SSL.Context(SSL.TLS_SERVER_METHOD)
    connection = SSL.Connection(_refusing_context)
    connection.set_accept_state()
    return connection
