"""``mitmgateway consumers``: Express Gateway's ``eg users|apps|credentials|scopes``, on the files
directly or through a running gateway's admin API (``--admin URL``, as ``eg`` uses its cli.url).

  mitmgateway consumers users create -p username=bob -p firstname=Bob -p lastname=Smith
  mitmgateway consumers apps create -u bob -p name=bobs-app
  mitmgateway consumers credentials create -c bob -t key-auth [-p scopes=orders:read]
  mitmgateway consumers credentials deactivate -t key-auth KEYID
  mitmgateway consumers users list | info bob | update bob -p email=b@x.io | deactivate bob | remove bob
  mitmgateway consumers scopes create orders:read | list | info S | remove S

(``scripts/consumers.py`` is the same tool, under the name the README first gave it.)

Either way the same handlers run (admin_api/): writes are checked as the gateway loads the file,
the file is replaced atomically with its comments kept, secrets are shown once and stored hashed.
What it prints is the admin API's JSON (a status change prints its status).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .admin_api import AdminApi, AdminRequest, Reply
from .config.companion_files import CONSUMERS_FILE, load_consumers
from .config.errors import ConfigError
from .config.source import load_document
from .stores import StoreSettings

NAME = "mitmgateway consumers"
Send = Callable[[AdminRequest], Reply]


def _properties(pairs: Sequence[str]) -> dict[str, Any]:
    """``-p key=value`` pairs (``scopes`` a comma-separated list), as eg takes them."""
    properties: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"{NAME}: -p takes key=value, got {pair!r}")
        properties[key] = [s for s in value.split(",") if s] if key == "scopes" else value
    return properties


def _over_http(base: str, token: str | None) -> Send:
    def send(request: AdminRequest) -> Reply:
        query = f"?{urlencode(request.query)}" if request.query else ""
        data = None if request.body is None else json.dumps(request.body).encode()
        http_request = urllib.request.Request(
            base.rstrip("/") + request.path + query, data=data, method=request.method
        )
        http_request.add_header("Content-Type", "application/json")
        if token:
            http_request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(http_request, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        except OSError as e:
            sys.exit(f"{NAME}: cannot reach the admin API at {base}: {e}")
        try:
            return Reply(status, json.loads(text) if text else None)
        except ValueError:
            return Reply(status, text.strip())

    return send


def _on_files(config: Path, consumers_file: Path | None) -> Send:
    """The admin API's handlers on the files (or the Redis the config keeps consumers in); the
    gateway, if one runs, reloads them."""
    store = None
    if consumers_file is None:
        named = None
        try:
            if config.exists():
                named = (load_document(config).data or {}).get("consumers")
            where = load_consumers(config.parent, named) if isinstance(named, dict) else None
        except ConfigError as e:
            sys.exit(f"{NAME}: {e}")
        store = where if isinstance(where, StoreSettings) else None
        consumers_file = config.parent / (named if isinstance(named, str) else CONSUMERS_FILE)
    return AdminApi(config if config.exists() else None, consumers_file, consumer_store=store).handle


def _request(args: argparse.Namespace) -> AdminRequest:
    """The admin API request an eg command stands for."""
    group, verb = args.group, args.verb
    ids: list[str] = getattr(args, "ids", None) or []
    q = lambda value: quote(value, safe="")  # noqa: E731
    if group == "scopes":
        if verb == "list":
            return AdminRequest("GET", "/scopes")
        if verb == "create":
            return AdminRequest("POST", "/scopes", body={"scopes": ids})
        return AdminRequest({"info": "GET", "remove": "DELETE"}[verb], f"/scopes/{q(ids[0])}")
    if group == "credentials":
        if verb == "create":
            body = {
                "consumerId": args.consumer,
                "type": args.type,
                "credential": _properties(args.properties),
            }
            return AdminRequest("POST", "/credentials", body=body)
        if verb == "list":
            return AdminRequest(
                "GET", f"/credentials/{q(args.consumer)}" if args.consumer else "/credentials"
            )
        path = f"/credentials/{q(args.type)}/{q(ids[0])}"
        if verb == "info":
            return AdminRequest("GET", path)
        return AdminRequest("PUT", f"{path}/status", body={"status": verb == "activate"})
    path = f"/{group}/{q(ids[0])}" if ids else f"/{group}"
    if verb == "list":
        return AdminRequest("GET", f"/{group}")
    if verb == "create":
        body = _properties(args.properties)
        if group == "apps":
            body["userId"] = args.user
        return AdminRequest("POST", f"/{group}", body=body)
    if verb in ("activate", "deactivate"):
        return AdminRequest("PUT", f"{path}/status", body={"status": verb == "activate"})
    if verb == "update":
        return AdminRequest("PUT", path, body=_properties(args.properties))
    return AdminRequest({"info": "GET", "remove": "DELETE"}[verb], path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=NAME, description="Users, apps, credentials and scopes (eg's commands)."
    )
    parser.add_argument(
        "--config", "-c", type=Path, default=Path("gateway.config.yml"), help="on the files of this config"
    )
    parser.add_argument(
        "--file", type=Path, help="the consumers file (default: the one the config names, or consumers.yml)"
    )
    parser.add_argument("--admin", metavar="URL", help="through a running gateway's admin API instead")
    parser.add_argument(
        "--admin-token",
        metavar="TOKEN",
        default=os.environ.get("MITMGATEWAY_ADMIN_TOKEN"),
        help="the admin API token (better: $MITMGATEWAY_ADMIN_TOKEN, which ps does not show)",
    )
    groups = parser.add_subparsers(dest="group", required=True)
    verbs = {
        "users": ("create", "list", "info", "update", "activate", "deactivate", "remove"),
        "apps": ("create", "list", "info", "update", "activate", "deactivate", "remove"),
        "credentials": ("create", "list", "info", "activate", "deactivate"),
        "scopes": ("create", "list", "info", "remove"),
    }
    for group, names in verbs.items():
        sub = groups.add_parser(group).add_subparsers(dest="verb", required=True)
        for verb in names:
            command = sub.add_parser(verb)
            if verb in ("create", "update") and group != "scopes":
                command.add_argument("-p", "--property", dest="properties", action="append", default=[])
            if group == "apps" and verb == "create":
                command.add_argument("-u", "--user", required=True, help="the app's user (username or id)")
            if group == "credentials":
                if verb in ("create", "list"):
                    command.add_argument(
                        "-c", "--consumer", required=verb == "create", help="username, app name or id"
                    )
                if verb != "list":
                    command.add_argument("-t", "--type", required=True, help="key-auth, basic-auth or jwt")
            if group == "scopes" and verb == "create":
                command.add_argument("ids", nargs="+", metavar="scope")
            elif verb not in ("create", "list"):
                command.add_argument("ids", nargs=1, metavar="id")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    send = (
        _over_http(args.admin, args.admin_token)
        if args.admin
        else _on_files(args.config.absolute(), args.file)
    )
    reply = send(_request(args))
    if reply.status >= 400:
        text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        sys.exit(f"{NAME}: {reply.status}: {text or 'not found'}")
    if isinstance(reply.body, dict) and set(reply.body) == {"status"}:
        print(reply.body["status"])
    elif reply.body is not None:
        print(json.dumps(reply.body, indent=2))
