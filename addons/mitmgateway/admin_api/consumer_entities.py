"""Express Gateway's ``/users`` and ``/apps``, over consumers.yml.

A user is a consumer under its username; an app is a consumer under its name with an ``owner``
(Express Gateway's ``userId``). Names are unique in the file, so an app cannot take a name a user
or another app has (Express Gateway allows two users' apps of one name). The JSON is Express
Gateway's: ``{id, username, firstname, lastname, email, redirectUri, isActive, createdAt,
updatedAt}`` for a user, ``{id, name, userId, redirectUri, isActive, ...}`` for an app.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedMap

from .routes import AdminError, AdminRequest, Handler, Reply
from .store import ConsumerStore

USER_FIELDS = {"username": True, "firstname": True, "lastname": True, "email": False, "redirectUri": False}
"""A user's fields, and whether one is required (Express Gateway's users model)."""
APP_FIELDS = {"name": True, "redirectUri": False}
MAX_FIELD_LENGTH = 512
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


_YAML11_FALSE = frozenset({"false", "no", "n", "off"})


def is_active(entry: Mapping[str, Any]) -> bool:
    """An entry's ``active`` as the gateway reads it: YAML 1.1, where a hand-written ``no`` or
    ``off`` is false (the round-trip reader keeps it as text)."""
    value = entry.get("active", True)
    return value.strip().lower() not in _YAML11_FALSE if isinstance(value, str) else bool(value)


def no_references(value: Any, name: str) -> None:
    """Refuse a ``${...}`` in what a request writes to the consumers: the gateway would read it
    as an environment variable's value (say a keyId of ``${HOME}``)."""
    if isinstance(value, str) and "${" in value:
        raise AdminError(400, f"{name} must not hold '${{' (the gateway reads it as a variable)")
    if isinstance(value, list):
        for item in value:
            no_references(item, name)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def consumers_in(document: Mapping[str, Any]) -> CommentedMap:
    return document["consumers"]


def is_app(entry: Mapping[str, Any]) -> bool:
    return "owner" in entry


def entity_id(name: str, entry: Mapping[str, Any]) -> str:
    return str(entry.get("id", name))


def find(document: Mapping[str, Any], ref: str, kind: str | None = None) -> tuple[str, CommentedMap] | None:
    """The consumer named `ref`, or with the id `ref`: a "user", an "app", or either."""
    consumers = consumers_in(document)

    def wanted(entry: Mapping[str, Any]) -> bool:
        return kind is None or (kind == "app") == is_app(entry)

    entry = consumers.get(ref)
    if entry is not None and wanted(entry):
        return ref, entry
    for name, entry in consumers.items():
        if entity_id(name, entry) == ref and wanted(entry):
            return name, entry
    return None


def _found(document: Mapping[str, Any], ref: str, kind: str) -> tuple[str, CommentedMap]:
    found = find(document, ref, kind)
    if found is None:
        raise AdminError(404, f"{'User' if kind == 'user' else 'Application'} not found: {ref}")
    return found


def _checked(fields: Mapping[str, bool], body: Any, creating: bool) -> dict[str, str]:
    """The body's fields, each a string Express Gateway's model allows; a 400 otherwise."""
    if not isinstance(body, dict):
        raise AdminError(400, "the body must be a JSON object")
    for key, required in fields.items():
        if required and creating and key not in body:
            raise AdminError(400, f"data must have required property '{key}'")
    for key, value in body.items():
        if key not in fields:
            raise AdminError(400, f"one or more properties is invalid: {key}")
        if not isinstance(value, str) or (fields[key] and not value):
            raise AdminError(400, f"{key} must be a non-empty string")
        if len(value) > MAX_FIELD_LENGTH:
            raise AdminError(400, f"{key} must be at most {MAX_FIELD_LENGTH} characters")
        no_references(value, key)
    if "email" in body and not _EMAIL.fullmatch(body["email"]):
        raise AdminError(400, f"email must be an email address, got {body['email']!r}")
    if "redirectUri" in body and not (
        urlsplit(body["redirectUri"]).scheme and urlsplit(body["redirectUri"]).netloc
    ):
        raise AdminError(400, f"redirectUri must be an absolute URI, got {body['redirectUri']!r}")
    return body


def user_view(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"id": entity_id(name, entry), "username": name}
    view.update(
        (key, entry[key]) for key in ("firstname", "lastname", "email", "redirectUri") if key in entry
    )
    view["isActive"] = is_active(entry)
    if entry.get("scopes"):
        view["scopes"] = list(entry["scopes"])
    view.update((key, entry[key]) for key in ("createdAt", "updatedAt") if key in entry)
    return view


def app_view(document: Mapping[str, Any], name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    owner = consumers_in(document).get(entry["owner"]) or {}
    view: dict[str, Any] = {
        "id": entity_id(name, entry),
        "name": name,
        "userId": entity_id(entry["owner"], owner),
    }
    view.update((key, entry[key]) for key in ("redirectUri",) if key in entry)
    view["isActive"] = is_active(entry)
    view.update((key, entry[key]) for key in ("createdAt", "updatedAt") if key in entry)
    return view


def consumer_view(document: Mapping[str, Any], name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return app_view(document, name, entry) if is_app(entry) else user_view(name, entry)


def page(items: list[Any], query: Mapping[str, str], key: str) -> Reply:
    """Express Gateway's listing: ``{users: [...], nextKey}``, ``start`` and ``count`` from the
    query; nextKey 0 once there is no more."""
    try:
        start, count = int(query.get("start", 0)), int(query.get("count", 100))
    except ValueError:
        raise AdminError(400, "start and count must be numbers") from None
    end = start + max(count, 1)
    return Reply(200, {key: items[start:end], "nextKey": end if end < len(items) else 0})


def _new_entry(fields: Mapping[str, str], **more: Any) -> CommentedMap:
    stamp = now()
    return CommentedMap(
        {"id": str(uuid.uuid4()), **more, **fields, "active": True, "createdAt": stamp, "updatedAt": stamp}
    )


def status_reply(entry: CommentedMap, status: Any, also: Sequence[CommentedMap] = ()) -> Reply:
    """Express Gateway's answer to ``PUT .../status {status}``: as it was, or the change made."""
    if not isinstance(status, bool):
        raise AdminError(400, "status must be true or false")
    if is_active(entry) == status:
        return Reply(200, {"status": "Active" if status else "Inactive"})
    for changed in [entry, *also]:
        changed["active"] = status
        changed["updatedAt"] = now()
    return Reply(200, {"status": "Activated" if status else "Deactivated"})


class ConsumerEntities:
    def __init__(self, store: ConsumerStore) -> None:
        self.store = store

    def routes(self) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/users"): self.list_users,
            ("POST", "/users"): self.create_user,
            ("GET", "/apps"): self.list_apps,
            ("POST", "/apps"): self.create_app,
        }
        for path, kind, fields in (("/users", "user", USER_FIELDS), ("/apps", "app", APP_FIELDS)):
            routes[("GET", f"{path}/:id")] = lambda r, kind=kind: self._show(r, kind)
            routes[("PUT", f"{path}/:id")] = lambda r, kind=kind, fields=fields: self._update(r, kind, fields)
            routes[("DELETE", f"{path}/:id")] = lambda r, kind=kind: self._remove(r, kind)
            routes[("PUT", f"{path}/:id/status")] = lambda r, kind=kind: self._status(r, kind)
        return routes

    def list_users(self, request: AdminRequest) -> Reply:
        consumers = consumers_in(self.store.read())
        users = [user_view(name, entry) for name, entry in consumers.items() if not is_app(entry)]
        return page(users, request.query, "users")

    def list_apps(self, request: AdminRequest) -> Reply:
        document = self.store.read()
        apps = [app_view(document, n, e) for n, e in consumers_in(document).items() if is_app(e)]
        return page(apps, request.query, "apps")

    def create_user(self, request: AdminRequest) -> Reply:
        fields = dict(_checked(USER_FIELDS, request.body, creating=True))
        with self.store.change() as document:
            name = fields.pop("username")
            if name in consumers_in(document):
                raise AdminError(409, "username already exists")
            consumers_in(document)[name] = entry = _new_entry(fields)
            view = user_view(name, entry)
        return Reply(200, view)

    def create_app(self, request: AdminRequest) -> Reply:
        body = dict(request.body) if isinstance(request.body, dict) else {}
        owner_ref = body.pop("userId", None)
        if not isinstance(owner_ref, str):
            raise AdminError(400, "userId: required")
        fields = dict(_checked(APP_FIELDS, body, creating=True))
        with self.store.change() as document:
            owner = find(document, owner_ref, "user")
            if owner is None:
                raise AdminError(422, "The specified user does not exist")
            name = fields.pop("name")
            if name in consumers_in(document):
                raise AdminError(409, f"an app or user named {name!r} exists already (names are unique here)")
            consumers_in(document)[name] = entry = _new_entry(fields, owner=owner[0])
            view = app_view(document, name, entry)
        return Reply(200, view)

    def _show(self, request: AdminRequest, kind: str) -> Reply:
        document = self.store.read()
        name, entry = _found(document, request.params["id"], kind)
        return Reply(200, consumer_view(document, name, entry))

    def _update(self, request: AdminRequest, kind: str, fields: Mapping[str, bool]) -> Reply:
        body = dict(request.body) if isinstance(request.body, dict) else request.body
        if kind == "user" and isinstance(body, dict):
            body.pop("username", None)  # immutable: Express Gateway ignores it too
        changes = _checked(fields, body, creating=False)
        with self.store.change() as document:
            name, entry = _found(document, request.params["id"], kind)
            new_name = changes.pop("name", name)
            if new_name != name:
                name = _rename(document, name, new_name)
            entry.update(changes)
            entry["updatedAt"] = now()
            view = consumer_view(document, name, entry)
        return Reply(200, view)

    def _remove(self, request: AdminRequest, kind: str) -> Reply:
        with self.store.change() as document:
            name, _entry = _found(document, request.params["id"], kind)
            consumers = consumers_in(document)
            # A user's apps go with it, as in Express Gateway (their credentials in their entries).
            for gone in [name, *(n for n, e in consumers.items() if e.get("owner") == name)]:
                del consumers[gone]
        return Reply(204)

    def _status(self, request: AdminRequest, kind: str) -> Reply:
        with self.store.change() as document:
            name, entry = _found(document, request.params["id"], kind)
            # Deactivating a user deactivates its apps (Express Gateway's cascade); activating
            # it leaves them as they are.
            apps = [e for e in consumers_in(document).values() if e.get("owner") == name]
            status = request.field("status", bool)
            return status_reply(entry, status, apps if kind == "user" and not status else [])


def _rename(document: Mapping[str, Any], name: str, new_name: str) -> str:
    """An app renamed where it stands in the file."""
    consumers = consumers_in(document)
    if new_name in consumers:
        raise AdminError(409, f"an app or user named {new_name!r} exists already (names are unique here)")
    position = list(consumers).index(name)
    entry = consumers.pop(name)
    consumers.insert(position, new_name, entry)
    return new_name
