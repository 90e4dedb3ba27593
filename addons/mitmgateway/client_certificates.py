"""Client certificates on the https listener: Express Gateway's ``https.options`` (``requestCert``,
``rejectUnauthorized``) and each ``tls`` entry's ``ca`` files.

With ``requestCert`` the handshake asks the client for a certificate and the gateway verifies it
against those CAs (its own trust, not mitmproxy's: a CA removed from the config is no longer
trusted on the next connection). With ``rejectUnauthorized`` (Node's default, hence Express
Gateway's) a client without a certificate so verified fails the handshake; without it the
connection goes on and the ``tlsClientAuthenticated`` condition tells the two apart. What was found
is kept per client connection (`ClientCertificates`) for the gate, which puts it in the decision
and before expressions (``req.client.authorized``, ``req.client.subject.CN``).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from mitmproxy import connection
from OpenSSL import SSL, crypto

from .config.errors import ConfigError, KeyPath
from .config.schema import check_type, check_unknown_keys, require_mapping


@dataclass(frozen=True)
class ClientAuth:
    require: bool
    """``rejectUnauthorized``: no verified certificate, no connection."""
    cas: tuple[x509.Certificate, ...]
    _store: crypto.X509Store = field(init=False, repr=False)
    session_context: bytes = field(init=False, repr=False)
    """What a TLS session must have been made under to be resumed: these CAs, this mode.
    (OpenSSL refuses to resume a session on a connection that verifies its client without one:
    the client's second connection would fail.)"""

    def __post_init__(self) -> None:
        # Made at load, not at a handshake.
        store = crypto.X509Store()
        for ca in self.cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
        # A configured intermediate is trusted as such, without its root.
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        digest = hashlib.sha256(b"require" if self.require else b"request")
        for ca in self.cas:
            digest.update(ca.fingerprint(hashes.SHA256()))
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "session_context", digest.digest())  # 32 bytes: OpenSSL's most

    def verifies(self, certificate: crypto.X509, chain: Sequence[crypto.X509] = ()) -> bool:
        """Issued by a configured CA (through the intermediates the client sent in `chain`), valid
        now, and not restricted to other uses than a client's (an extended key usage without
        clientAuth, such as a server's certificate)."""
        try:
            crypto.X509StoreContext(self._store, certificate, list(chain) or None).verify_certificate()
        except crypto.X509StoreContextError:
            return False
        try:
            usages = certificate.to_cryptography().extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        except x509.ExtensionNotFound:
            return True
        return ExtendedKeyUsageOID.CLIENT_AUTH in usages.value


@dataclass(frozen=True)
class ClientCertificate:
    subject: str
    """RFC 4514: ``CN=device-7,O=Acme``."""
    fields: Mapping[str, str]
    """The subject's attributes by their short names (``CN``, ``O``, ``OU``...)."""
    verified: bool

    @classmethod
    def of(cls, certificate: crypto.X509, verified: bool) -> ClientCertificate:
        name = certificate.to_cryptography().subject
        return cls(name.rfc4514_string(), _fields(name), verified)

    @classmethod
    def recorded(cls, subject: str, verified: bool) -> ClientCertificate:
        """As a decision recorded it (``{subject, verified}``), for a replay."""
        return cls(subject, _fields(x509.Name.from_rfc4514_string(subject)), verified)

    def as_request_member(self) -> dict[str, Any]:
        """``req.client`` as expressions see it (Node's names: authorized, subject)."""
        return {"authorized": self.verified, "subject": dict(self.fields)}

    def as_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "verified": self.verified}


def _fields(name: x509.Name) -> dict[str, str]:
    """A name's attributes by short name; the first of a repeated one (a second OU, say)."""
    fields: dict[str, str] = {}
    for attribute in name:
        fields.setdefault(attribute.rfc4514_attribute_name, str(attribute.value))
    return fields


ClientCertificates = weakref.WeakKeyDictionary[connection.Client, ClientCertificate]
"""What each client connection presented, and whether it was verified."""


def ask_for_certificate(
    ssl_conn: SSL.Connection, client: connection.Client, auth: ClientAuth, found: ClientCertificates
) -> None:
    """Make the handshake of `ssl_conn` ask for a client certificate and judge it."""

    sent: list[crypto.X509] = []

    def judge(conn: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int) -> bool:
        if depth != 0:
            sent.append(certificate)  # (OpenSSL calls from the top of the chain down to its leaf)
            return True  # the chain is judged from its leaf, against the configured CAs only
        verified = auth.verifies(certificate, sent)
        found[client] = ClientCertificate.of(certificate, verified)
        return verified or not auth.require

    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if auth.require else 0)
    ssl_conn.set_verify(mode, judge)
    # On mitmproxy's context (shared by connections with the same certificate): harmless to the
    # others, which then resume sessions too.
    ssl_conn.get_context().set_session_id(auth.session_context)


def resumed(
    ssl_conn: SSL.Connection, client: connection.Client, auth: ClientAuth, found: ClientCertificates
) -> None:
    """After the handshake: a resumed session skips verification, but holds its certificate. Its
    session context says it was made under these CAs and this mode: required, it was verified
    then; asked for only, its leaf is judged again (without the intermediates, which a resumed
    session does not keep: one issued below an intermediate not in ``ca`` counts as unverified)."""
    if client in found:
        return
    certificate = ssl_conn.get_peer_certificate()
    if certificate is not None:
        found[client] = ClientCertificate.of(certificate, auth.require or auth.verifies(certificate))


def parse_client_auth(options: Any, cas: tuple[x509.Certificate, ...], path: KeyPath) -> ClientAuth | None:
    """``https.options`` with the tls entries' CAs: None unless ``requestCert``."""
    if options is None:
        return None
    options = require_mapping(options, path)
    check_unknown_keys(options, ("requestCert", "rejectUnauthorized"), path)
    request = check_type(bool, options.get("requestCert", False), path.key("requestCert"))
    # Node's default, and so Express Gateway's: a certificate asked for is required.
    require = check_type(bool, options.get("rejectUnauthorized", True), path.key("rejectUnauthorized"))
    if not request:
        return None
    if not cas:
        raise ConfigError(
            path.key("requestCert"),
            "needs a tls entry's ca (PEM files of the CAs client certificates are verified against)",
        )
    return ClientAuth(require, cas)
