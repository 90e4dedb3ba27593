"""Express Gateway's ``/credentials`` and ``/scopes``, over consumers.yml.

A credential lives in its consumer's entry. Its Express Gateway id is its keyId for key-auth and
jwt (a jwt credential's keyId is the ``sub`` of the tokens it stands for), and its consumer's id
for basic-auth (one a consumer, its username the consumer's name). Secrets are shown once, in the
answer that creates them, and stored as hashes: a key-auth keySecret as SHA-256, a password as
bcrypt. A jwt credential's keySecret is not stored at all: the jwt policy checks tokens against
its own key (as Express Gateway's does), so nothing would read it.

``/scopes`` is the file's ``scopes`` list: as in Express Gateway, a credential may only be given a
scope registered there.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..credentials import CREDENTIAL_TYPES
from ..policies.basic_auth import hash_password
from ..policies.key_auth import hash_api_key_secret
from .consumer_entities import (
    MAX_FIELD_LENGTH,
    consumers_in,
    entity_id,
    find,
    is_active,
    no_references,
    now,
    status_reply,
)
from .routes import AdminError, AdminRequest, Handler, Reply
from .store import ConsumerStore

CREATED_HERE = ("key-auth", "basic-auth", "jwt")
OAUTH2_HINT = (
    "oauth2 credentials are not kept here: this gateway is no authorization server. Let an identity "
    "provider issue tokens (the jwt policy with jwksUri checks them) or check them with oauth2-introspect"
)
Found = tuple[str, CommentedMap, CommentedMap]
"""A credential: its consumer's name, the consumer's entry, and the credential's entry."""


def _eg_key(id_key: str) -> str:
    """What Express Gateway calls a credential's id key: a jwt credential's sub is its keyId."""
    return "keyId" if id_key == "sub" else id_key


def credential_view(name: str, entry: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item["type"]
    id_key = CREDENTIAL_TYPES[kind].id_key
    consumer_id = entity_id(name, entry)
    view: dict[str, Any] = {
        "type": kind,
        "id": consumer_id if kind == "basic-auth" else str(item[id_key]),
        "consumerId": consumer_id,
        _eg_key(id_key): item[id_key],
        "isActive": is_active(item),
        "scopes": list(item.get("scopes") or []),
    }
    view.update((key, item[key]) for key in ("createdAt", "updatedAt") if key in item)
    return view


def _credentials(entry: Mapping[str, Any]) -> list[CommentedMap]:
    return entry.get("credentials") or []


def find_credential(document: Mapping[str, Any], kind: str, ref: str) -> Found | None:
    if kind not in CREDENTIAL_TYPES:
        raise AdminError(400, OAUTH2_HINT if kind == "oauth2" else f"Invalid credential type: {kind}")
    if kind == "basic-auth" and (consumer := find(document, ref)) is not None:
        for item in _credentials(consumer[1]):
            if item.get("type") == kind:
                return consumer[0], consumer[1], item
    id_key = CREDENTIAL_TYPES[kind].id_key
    for name, entry in consumers_in(document).items():
        for item in _credentials(entry):
            if item.get("type") == kind and str(item.get(id_key)) == ref:
                return name, entry, item
    return None


def _found_credential(document: Mapping[str, Any], request: AdminRequest) -> Found:
    found = find_credential(document, request.params["type"], request.params["id"])
    if found is None:
        raise AdminError(404, f"No credential found with id: {request.params['id']}")
    return found


def _registered(document: Mapping[str, Any], scopes: Any) -> list[str]:
    """`scopes` (a name or a list of them), each registered through /scopes; a 400 otherwise."""
    scopes = [scopes] if isinstance(scopes, str) else scopes
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise AdminError(400, "scopes must be a scope or a list of scopes")
    no_references(scopes, "scopes")
    if missing := [s for s in scopes if s not in (document.get("scopes") or [])]:
        raise AdminError(
            400, f"One or more scopes don't exist: {', '.join(missing)} (create them with POST /scopes)"
        )
    return list(dict.fromkeys(scopes))


def _only(details: Mapping[str, Any], allowed: tuple[str, ...], kind: str) -> None:
    for key, value in details.items():
        if key not in allowed:
            raise AdminError(400, f"credential.{key}: a {kind} credential has no such property")
        if key != "autoGeneratePassword" and not isinstance(value, str):
            raise AdminError(400, f"credential.{key} must be a string")
        if key in ("keyId", "keySecret") and len(value) > MAX_FIELD_LENGTH:
            raise AdminError(400, f"credential.{key} must be at most {MAX_FIELD_LENGTH} characters")
        if key == "keyId":
            no_references(value, "credential.keyId")


def _new_credential(
    document: Mapping[str, Any], name: str, entry: CommentedMap, kind: str, details: dict[str, Any]
) -> tuple[CommentedMap, dict[str, Any]]:
    """The stored credential, and the secrets shown once."""
    stamp = now()
    shown: dict[str, Any] = {}
    if kind == "basic-auth":
        _only(details, ("password", "autoGeneratePassword", "passwordKey"), kind)
        if any(i.get("type") == kind and is_active(i) for i in _credentials(entry)):
            raise AdminError(409, "Credential already exists and is active")
        entry["credentials"] = CommentedSeq(i for i in _credentials(entry) if i.get("type") != kind)
        if (taken := find_credential(document, kind, name)) is not None and taken[0] != name:
            raise AdminError(409, f"the basic-auth username {name!r} is {taken[0]!r}'s")
        password = details.get("password")
        if password is None:
            if details.get("autoGeneratePassword", True) is False:
                raise AdminError(400, "password is required")
            password = shown["password"] = str(uuid.uuid4())
        stored = {"username": name, "passwordHash": hash_password(password)}
    else:
        _only(details, ("keyId", "keySecret"), kind)
        key_id = details.get("keyId") or secrets.token_urlsafe(16)
        if ":" in key_id:
            raise AdminError(400, "credential.keyId must not hold ':' (keys are sent as KEYID:SECRET)")
        if find_credential(document, kind, key_id) is not None:
            raise AdminError(409, f"a {kind} credential with keyId {key_id!r} exists already")
        shown["keySecret"] = details.get("keySecret") or secrets.token_urlsafe(24)
        id_key = CREDENTIAL_TYPES[kind].id_key
        stored = {id_key: key_id}
        if kind == "key-auth":
            stored["keySecretHash"] = hash_api_key_secret(shown["keySecret"])
    item = CommentedMap({"type": kind, **stored, "active": True, "createdAt": stamp, "updatedAt": stamp})
    return item, shown


class CredentialEntities:
    def __init__(self, store: ConsumerStore) -> None:
        self.store = store

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/credentials"): self.list_all,
            ("POST", "/credentials"): self.create,
            ("GET", "/credentials/:consumerId"): self.list_of_consumer,
            ("GET", "/credentials/:type/:id"): self.show,
            ("PUT", "/credentials/:type/:id/status"): self.status,
            ("PUT", "/credentials/:type/:id/scopes"): self.set_scopes,
            ("PUT", "/credentials/:type/:id/scopes/:scope"): lambda r: self._scope(r, add=True),
            ("DELETE", "/credentials/:type/:id/scopes/:scope"): lambda r: self._scope(r, add=False),
            ("GET", "/scopes"): self.list_scopes,
            ("POST", "/scopes"): self.create_scopes,
            ("GET", "/scopes/:scope"): self.show_scope,
            ("PUT", "/scopes/:scope"): lambda r: self._add_scopes([r.params["scope"]]),
            ("DELETE", "/scopes/:scope"): self.remove_scope,
        }

    def list_all(self, request: AdminRequest) -> Reply:
        consumers = consumers_in(self.store.read())
        views = [credential_view(n, e, i) for n, e in consumers.items() for i in _credentials(e)]
        return Reply(200, {"credentials": views})

    def list_of_consumer(self, request: AdminRequest) -> Reply:
        found = find(self.store.read(), request.params["consumerId"])
        if found is None:
            raise AdminError(404, f"Consumer Not Found: id:{request.params['consumerId']}")
        return Reply(200, {"credentials": [credential_view(*found, i) for i in _credentials(found[1])]})

    def create(self, request: AdminRequest) -> Reply:
        consumer_ref = request.field("consumerId")
        kind = request.field("type")
        details = request.field("credential", dict, required=False) or {}
        with self.store.change() as document:
            if kind not in CREATED_HERE:
                raise AdminError(400, OAUTH2_HINT if kind == "oauth2" else f"Invalid credential type: {kind}")
            found = find(document, consumer_ref)
            if found is None:
                raise AdminError(422, f"No consumer found with id: {consumer_ref}")
            name, entry = found
            details = dict(details)
            scopes = _registered(document, details.pop("scopes", []))
            item, shown = _new_credential(document, name, entry, kind, details)
            if scopes:
                item.insert(len(item) - 2, "scopes", scopes)
            if entry.get("credentials") is None:
                entry["credentials"] = CommentedSeq()
            entry["credentials"].append(item)
            view = {**credential_view(name, entry, item), **shown}
        return Reply(200, view)

    def show(self, request: AdminRequest) -> Reply:
        return Reply(200, credential_view(*_found_credential(self.store.read(), request)))

    def status(self, request: AdminRequest) -> Reply:
        status = request.field("status", bool)
        with self.store.change() as document:
            return status_reply(_found_credential(document, request)[2], status)

    def set_scopes(self, request: AdminRequest) -> Reply:
        scopes = request.field("scopes", list)
        with self.store.change() as document:
            item = _found_credential(document, request)[2]
            item["scopes"] = _registered(document, scopes)
            item["updatedAt"] = now()
        return Reply(204)

    def _scope(self, request: AdminRequest, add: bool) -> Reply:
        with self.store.change() as document:
            item = _found_credential(document, request)[2]
            scope = request.params["scope"]
            scopes = [s for s in item.get("scopes") or [] if s != scope]
            item["scopes"] = [*scopes, *_registered(document, [scope])] if add else scopes
            item["updatedAt"] = now()
        return Reply(204)

    def list_scopes(self, request: AdminRequest) -> Reply:
        return Reply(200, {"scopes": list(self.store.read().get("scopes") or [])})

    def create_scopes(self, request: AdminRequest) -> Reply:
        scopes = request.field("scopes", (list, str))
        return self._add_scopes([scopes] if isinstance(scopes, str) else scopes)

    def _add_scopes(self, scopes: list[Any]) -> Reply:
        if not scopes or not all(isinstance(s, str) and 0 < len(s) <= MAX_FIELD_LENGTH for s in scopes):
            raise AdminError(400, "scopes must be a list of names")
        no_references(scopes, "scopes")
        with self.store.change() as document:
            registered = document.get("scopes")
            if registered is None:
                document["scopes"] = registered = CommentedSeq()
            if any(s in registered for s in scopes):
                raise AdminError(409, "One or more scopes already exist.")
            registered.extend(dict.fromkeys(scopes))
        return Reply(201)

    def show_scope(self, request: AdminRequest) -> Reply:
        scope = request.params["scope"]
        if scope not in (self.store.read().get("scopes") or []):
            raise AdminError(404, f"scope not found: {scope}")
        return Reply(200, {"scope": scope})

    def remove_scope(self, request: AdminRequest) -> Reply:
        scope = request.params["scope"]
        with self.store.change() as document:
            registered = document.get("scopes") or []
            if scope not in registered:
                raise AdminError(404, f"scope not found: {scope}")
            registered.remove(scope)
        return Reply(204)
