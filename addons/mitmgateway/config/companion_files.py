"""The files beside gateway.config.yml that the config reads: consumers.yml (the consumers and
their credentials) and Express Gateway's system.config.yml (its ``db.redis``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..consumers import ConsumerDirectory, Consumers, parse_consumers
from ..stores import StoreSettings
from .errors import ROOT, ConfigError, KeyPath
from .schema import check_type, check_unknown_keys, require_mapping, tcp_port
from .source import load_document

SYSTEM_CONFIG = "system.config.yml"
CONSUMERS_FILE = "consumers.yml"


def consumers_file(config_dir: Path, consumers: ConsumerDirectory) -> Path:
    """Where the consumers are kept: the file they were read from, else consumers.yml beside the
    config (watched even while missing, and where the admin API creates it)."""
    return consumers.file or config_dir / CONSUMERS_FILE


def load_consumers(config_dir: Path, named: Any) -> Consumers | StoreSettings:
    """The consumers file the config names, or consumers.yml beside it if there is one; or, with
    ``consumers: {store: redis}``, the Redis of system.config.yml's db.redis that keeps them."""
    if isinstance(named, dict):
        path = KeyPath("consumers")
        check_unknown_keys(named, ["store"], path)
        if named.get("store") != "redis":
            raise ConfigError(
                path.key("store"), f"must be redis (or give a file name), got {named.get('store')!r}"
            )
        store = system_config_store(config_dir)
        if store is None:
            raise ConfigError(
                path.key("store"), f"redis needs a Redis: db.redis in {config_dir / SYSTEM_CONFIG}"
            )
        return store
    if named is None:
        file = config_dir / CONSUMERS_FILE
        if not file.exists():
            return Consumers()
    else:
        file = config_dir / check_type(str, named, KeyPath("consumers"))
    try:
        document = load_document(file)
    except ConfigError as e:
        raise e.in_file(str(file)) from None
    try:
        return parse_consumers(document.data, file)
    except ConfigError as e:
        raise e.in_file(str(file), document.where) from None


def system_config_store(config_dir: Path) -> StoreSettings | None:
    """Express Gateway's ``db.redis`` from a system.config.yml beside the gateway config."""
    system_file = config_dir / SYSTEM_CONFIG
    if not system_file.exists():
        return None
    try:
        document = load_document(system_file).data
        db = require_mapping(require_mapping(document, ROOT).get("db"), KeyPath("db"))
        raw = require_mapping(db.get("redis"), KeyPath("db.redis"))
        if not raw or raw.get("emulate"):
            return None  # EG's in-memory emulation: our memory store
        host = check_type(str, raw.get("host", "127.0.0.1"), KeyPath("db.redis.host"))
        port = tcp_port(int(str(raw.get("port", 6379))), KeyPath("db.redis.port"))
        db_index = int(str(raw.get("db", 0)))
        password = raw.get("password")
        namespace = str(raw.get("namespace", StoreSettings.namespace))
    except ConfigError as e:  # before ValueError, which it is a kind of
        raise e.in_file(str(system_file)) from None
    except ValueError as e:
        raise ConfigError("db.redis", f"port and db must be numbers: {e}", str(system_file)) from None
    scheme = "rediss" if raw.get("tls") else "redis"
    auth = f":{quote(str(password), safe='')}@" if password else ""
    netloc = f"[{host}]" if ":" in host else host
    return StoreSettings(
        type="redis",
        url=f"{scheme}://{auth}{netloc}:{port}/{db_index}",
        namespace=namespace,
    )
