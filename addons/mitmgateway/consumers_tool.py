"""``mitmgateway consumers``: manage consumers.yml (the gateway reloads it live).

  mitmgateway consumers add alice [--scope orders:read ...]
  mitmgateway consumers credential alice key-auth [--scope S ...]     prints KEYID:SECRET, once
  mitmgateway consumers credential alice basic-auth --username alice  prints the password, once
  mitmgateway consumers credential alice jwt --sub alice@example.com
  mitmgateway consumers list
  mitmgateway consumers deactivate alice [--credential ID]            and activate, the same way

(``scripts/consumers.py`` is the same tool, under the name the README first gave it.)

Secrets are shown once and stored only as hashes (SHA-256 for API keys, bcrypt for passwords).
The file is replaced atomically (a reader never sees half of it); the comment lines at its top
are kept, comments elsewhere are not.
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from .config.errors import ConfigError
from .consumers import parse_consumers
from .credentials import CREDENTIAL_TYPES
from .policies.key_auth import hash_api_key_secret

NAME = "mitmgateway consumers"
HEADER = "# Consumers of the gateway and their credentials; managed by mitmgateway consumers.\n"


def read(file: Path) -> tuple[str, dict[str, Any]]:
    """The file's leading comment block and its document."""
    if not file.exists():
        return HEADER, {"consumers": {}}
    text = file.read_text()
    lines = text.splitlines(keepends=True)
    first_content = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = "".join(lines[:first_content])
    document = yaml.safe_load(text) or {}
    document.setdefault("consumers", {})
    return header or HEADER, document


def write(file: Path, header: str, document: dict[str, Any]) -> None:
    try:
        parse_consumers(document, file)  # never write a file the gateway would refuse
    except ConfigError as e:
        sys.exit(f"{NAME}: refusing to write an invalid file: {e}")
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    fd, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        # mkstemp's 0600 for a new file (it holds credential hashes); an existing file keeps
        # the mode its owner gave it (say 0640 for a gateway running as another user of a group).
        if file.exists():
            os.chmod(temporary, stat.S_IMODE(file.stat().st_mode))
        os.replace(temporary, file)
    except BaseException:
        os.unlink(temporary)
        raise


def consumer(document: dict[str, Any], name: str) -> dict[str, Any]:
    found = document["consumers"].get(name)
    if found is None:
        sys.exit(f"{NAME}: no consumer {name!r}")
    return found


def _id_key(credential: dict[str, Any]) -> str:
    return CREDENTIAL_TYPES[credential["type"]].id_key


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=NAME, description="Manage consumers.yml (reloaded live).")
    parser.add_argument("--file", type=Path, default=Path("consumers.yml"))
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add")
    add.add_argument("name")
    add.add_argument("--scope", action="append", default=[])
    credential = commands.add_parser("credential")
    credential.add_argument("name")
    credential.add_argument("type", choices=sorted(CREDENTIAL_TYPES))
    credential.add_argument("--scope", action="append", default=[])
    credential.add_argument("--sub", help="jwt: the token's sub")
    credential.add_argument("--username", help="basic-auth: the user name")
    commands.add_parser("list")
    for verb in ("activate", "deactivate"):
        toggle = commands.add_parser(verb)
        toggle.add_argument("name")
        toggle.add_argument("--credential", help="a credential's sub, keyId or username (default: all)")
    args = parser.parse_args(argv)

    header, document = read(args.file)
    consumers = document["consumers"]
    if args.command == "add":
        if args.name in consumers:
            sys.exit(f"{NAME}: {args.name!r} exists already")
        consumers[args.name] = {"active": True, "scopes": args.scope, "credentials": []}
        write(args.file, header, document)
        print(f"added consumer {args.name}")
    elif args.command == "credential":
        entry = consumer(document, args.name)
        item: dict[str, Any] = {"type": args.type}
        shown = None
        if args.type == "jwt":
            if not args.sub:
                sys.exit(f"{NAME}: a jwt credential needs --sub")
            item["sub"] = args.sub
        elif args.type == "key-auth":
            key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
            item.update(keyId=key_id, keySecretHash=hash_api_key_secret(secret))
            shown = f"API key (shown once): {key_id}:{secret}"
        else:
            if not args.username:
                sys.exit(f"{NAME}: a basic-auth credential needs --username")
            password = secrets.token_urlsafe(18)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(12)).decode()
            item.update(username=args.username, passwordHash=hashed)
            shown = f"password for {args.username} (shown once): {password}"
        item.update(active=True, scopes=args.scope)
        entry.setdefault("credentials", []).append(item)
        write(args.file, header, document)
        print(f"added a {args.type} credential to {args.name}")
        if shown:
            print(shown)
    elif args.command == "list":
        if not args.file.exists():
            sys.exit(f"{NAME}: no {args.file} here (add a consumer to create it, or give --file)")
        if not consumers:
            print(f"{args.file}: no consumers")
        for name, entry in consumers.items():
            state = "active" if entry.get("active", True) else "inactive"
            print(f"{name} ({state}) scopes: {', '.join(entry.get('scopes') or []) or '-'}")
            for item in entry.get("credentials") or []:
                state = "active" if item.get("active", True) else "inactive"
                print(f"  {item['type']} {item[_id_key(item)]} ({state})")
    else:
        entry = consumer(document, args.name)
        active = args.command == "activate"
        if args.credential is None:
            entry["active"] = active
        else:
            credentials = entry.get("credentials") or []
            matches = [c for c in credentials if c.get(_id_key(c)) == args.credential]
            if not matches:
                sys.exit(f"{NAME}: {args.name!r} has no credential {args.credential!r}")
            for item in matches:
                item["active"] = active
        write(args.file, header, document)
        print(f"{args.command}d {args.name}{' ' + args.credential if args.credential else ''}")
