"""Consumers and their credentials: Express Gateway's users/apps database, as a file we watch.

``consumers.yml`` (beside gateway.config.yml, or the file its ``consumers`` key names) lists who
may call the APIs and how they prove it::

    consumers:
      alice:
        active: true
        scopes: [orders:read]
        credentials:
          - {type: jwt, sub: alice@example.com}
          - {type: key-auth, keyId: 3f2a..., keySecretHash: sha256:..., scopes: [orders:read]}
          - {type: basic-auth, username: alice, passwordHash: $2b$12$...}
      alice-dashboard:          # an app (Express Gateway's): it has an owner
        owner: alice
        credentials: [...]
    scopes: [orders:read]       # the scopes the admin API lets credentials name (its /scopes)

A consumer is one of Express Gateway's users, or one of its apps when it names its ``owner``.
``id`` is Express Gateway's id for it (the admin API gives one to what it creates; the name
otherwise); ``firstname``, ``lastname``, ``email``, ``redirectUri``, ``createdAt`` and
``updatedAt`` are the admin API's to show, the gateway does not read them.

Secrets are never stored: API key secrets as SHA-256 (they are long random strings, so a fast
hash is enough), passwords as bcrypt or argon2 hashes. It is parsed with the gateway config and
reloaded with it. ``mitmgateway consumers`` writes it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .config.errors import ROOT, ConfigError, KeyPath
from .config.schema import check_type, check_unknown_keys, require_list, require_mapping
from .credentials import CREDENTIAL_TYPES


@dataclass(frozen=True)
class Credential:
    type: str
    id: str
    secret_hash: str | None
    active: bool
    scopes: frozenset[str]


@dataclass(frozen=True)
class Consumer:
    id: str
    active: bool
    scopes: frozenset[str]
    credentials: tuple[Credential, ...]
    name: str = ""
    """Its key in the file: a user's username, an app's name (the id unless one is given)."""
    owner: str | None = None
    """An app's user."""


@dataclass(frozen=True)
class Authenticated:
    """Who a credential proved the client to be."""

    consumer: Consumer
    credential: Credential

    # Read on every request it authenticates: worked out once (consumers change only on reload).
    @functools.cached_property
    def scopes(self) -> frozenset[str]:
        return self.consumer.scopes | self.credential.scopes

    @functools.cached_property
    def _sorted_scopes(self) -> list[str]:
        return sorted(self.scopes)

    def as_user(self, claims: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What conditions, templates (``${req.user.id}``) and the log see."""
        consumer = self.consumer
        # Express Gateway's req.user: its type, and a user's username or an app's name.
        named = (
            {"type": "application", "name": consumer.name}
            if consumer.owner
            else {"type": "user", "username": consumer.name}
        )
        return {**(claims or {}), **named, "id": consumer.id, "scopes": list(self._sorted_scopes)}


class ConsumerDirectory(Protocol):
    """Who the auth policies look credentials up in: `Consumers` from a file, or the
    `SharedConsumers` of a Redis (shared_consumers.py)."""

    file: Path | None

    @property
    def kept_in(self) -> str | None:
        """Where they are kept, for the log (None: nowhere, so nobody can authenticate)."""

    def find(self, credential_type: str, credential_id: str) -> Authenticated | None: ...


@dataclass(frozen=True)
class Consumers:
    file: Path | None = None
    by_credential: Mapping[tuple[str, str], Authenticated] = field(default_factory=dict)

    @property
    def kept_in(self) -> str | None:
        return None if self.file is None else str(self.file)

    def find(self, credential_type: str, credential_id: str) -> Authenticated | None:
        """The active consumer behind an active credential, if there is one."""
        found = self.by_credential.get((credential_type, credential_id))
        if found is None or not found.consumer.active or not found.credential.active:
            return None
        return found


def _scopes(raw: Any, path: KeyPath) -> frozenset[str]:
    return frozenset(check_type(tuple[str, ...], raw, path)) if raw is not None else frozenset()


def _credential(raw: Any, path: KeyPath) -> Credential:
    raw = require_mapping(raw, path)
    kind = check_type(str, raw.get("type"), path.key("type"))
    credential_type = CREDENTIAL_TYPES.get(kind)
    if credential_type is None:
        known = ", ".join(sorted(CREDENTIAL_TYPES))
        raise ConfigError(path.key("type"), f"must be one of {known}, got {kind!r}")
    id_key, secret_key = credential_type.id_key, credential_type.secret_key
    known = [
        "type",
        id_key,
        *([secret_key] if secret_key else []),
        "active",
        "scopes",
        "createdAt",
        "updatedAt",
    ]
    check_unknown_keys(raw, known, path)
    if id_key not in raw:
        raise ConfigError(path.key(id_key), f"is required for a {kind} credential")
    secret_hash = None
    if secret_key is not None:
        secret_hash = check_type(str, raw.get(secret_key), path.key(secret_key))
        if not credential_type.is_stored_form(secret_hash):
            raise ConfigError(
                path.key(secret_key), f"must be {credential_type.stored_form}, never the secret itself"
            )
    return Credential(
        kind,
        check_type(str, raw[id_key], path.key(id_key)),
        secret_hash,
        check_type(bool, raw.get("active", True), path.key("active")),
        _scopes(raw.get("scopes"), path.key("scopes")),
    )


PROFILE_KEYS = ("firstname", "lastname", "email", "redirectUri", "createdAt", "updatedAt")
"""What the admin API keeps of a consumer for Express Gateway's clients; the gateway never reads it."""


def _consumer(name: str, raw: Any, path: KeyPath) -> Consumer:
    raw = require_mapping(raw, path)
    check_unknown_keys(raw, ["id", "owner", "active", "scopes", "credentials", *PROFILE_KEYS], path)
    for key in PROFILE_KEYS:
        if key in raw:
            check_type(str, raw[key], path.key(key))
    credentials_path = path.key("credentials")
    credentials = tuple(
        _credential(item, credentials_path.index(i))
        for i, item in enumerate(require_list(raw.get("credentials", []), credentials_path))
    )
    owner = raw.get("owner")
    return Consumer(
        check_type(str, raw.get("id", name), path.key("id")),
        check_type(bool, raw.get("active", True), path.key("active")),
        _scopes(raw.get("scopes"), path.key("scopes")),
        credentials,
        name,
        None if owner is None else check_type(str, owner, path.key("owner")),
    )


def _check_relations(consumers: Mapping[str, Consumer], path: KeyPath) -> None:
    """Ids are unique, and an app's owner is a user in the file."""
    ids: dict[str, str] = {}
    for name, consumer in consumers.items():
        if consumer.id in ids:
            raise ConfigError(
                path.key(name).key("id"), f"{consumer.id!r} is the id of {ids[consumer.id]!r} too"
            )
        ids[consumer.id] = name
        if consumer.owner is None:
            continue
        owner = consumers.get(consumer.owner)
        if owner is None or owner.owner is not None:
            raise ConfigError(
                path.key(name).key("owner"), f"must name a user in this file, got {consumer.owner!r}"
            )


def parse_consumers(document: Any, file: Path) -> Consumers:
    """The consumers in `document` (read from `file`), with credentials of the types the auth
    policies declare."""
    # The policies declare the credential types as they are imported (they import this module,
    # so it cannot import them first).
    importlib.import_module(f"{__package__}.policies")
    root = require_mapping(document, ROOT)
    check_unknown_keys(root, ["consumers", "scopes"], ROOT)
    _scopes(root.get("scopes"), KeyPath("scopes"))
    by_credential: dict[tuple[str, str], Authenticated] = {}
    path = KeyPath("consumers")
    consumers = {
        str(name): _consumer(str(name), raw, path.key(str(name)))
        for name, raw in require_mapping(root.get("consumers"), path).items()
    }
    _check_relations(consumers, path)
    for consumer in consumers.values():
        credentials_path = path.key(consumer.name).key("credentials")
        credentials = consumer.credentials
        for i, credential in enumerate(credentials):
            key = (credential.type, credential.id)
            if key in by_credential:
                raise ConfigError(
                    credentials_path.index(i),
                    f"{credential.type} credential {credential.id!r} also belongs to "
                    f"{by_credential[key].consumer.name!r}",
                )
            by_credential[key] = Authenticated(consumer, credential)
    return Consumers(file, by_credential)
