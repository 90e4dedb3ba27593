"""Consumers kept in Redis, shared by every gateway instance (``consumers: {store: redis}``), as
Express Gateway keeps its users, apps and credentials in the Redis of system.config.yml's
``db.redis``.

The whole consumers document (consumers.yml's shape) is one JSON value under
``NAMESPACE-consumers``, with a version under ``NAMESPACE-consumers-version`` that every write
increments. Each gateway process polls the version every half second from a thread of its own
(never the event loop) and, when it moved, reads the document, checks it as consumers.yml is
checked and swaps it in whole (a reference assignment: a request sees the old consumers or the
new ones). So a write through one instance's admin API is served by all within a second, without
a reload. Redis down: each instance goes on serving the consumers it last saw; the outage is
logged once, and its end.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import redis
from redis.exceptions import RedisError

from .config.errors import ConfigError
from .consumers import Authenticated, Consumers, parse_consumers
from .outages import Outage
from .stores import StoreSettings
from .stores.redis_store import without_password

logger = logging.getLogger("mitmgateway")

POLL_SECONDS = 0.5


def redis_keys(settings: StoreSettings) -> tuple[str, str, str, str]:
    """The document's key, its version's, the admin API's write lock's, and the generation's (a
    random id set by the first write: a Redis that lost its data starts a new one)."""
    base = f"{settings.namespace}-consumers"
    return base, f"{base}-version", f"{base}-lock", f"{base}-generation"


Version = list[object]
"""``[generation, number]``, as JSON has it (the pool's ready files)."""


def served_since(served: object, written: Version) -> bool:
    """Whether a process serving version `served` serves what was `written` (or a later write)."""
    return isinstance(served, list) and served[:1] == written[:1] and served[1] >= written[1]


def source_key(settings: StoreSettings) -> str:
    """How the admin API and the pool name these consumers among a config's sources."""
    return f"redis-consumers:{without_password(settings.url or '')}#{settings.namespace}"


def connect(settings: StoreSettings) -> redis.Redis:
    timeout = max(settings.timeout_ms / 1000, 1.0)
    return redis.Redis.from_url(settings.url or "", socket_timeout=timeout, socket_connect_timeout=timeout)


class SharedConsumers:
    """The consumers in Redis as this process last saw them; found as `Consumers.find` finds."""

    file: Path | None = None

    def __init__(self, settings: StoreSettings, follow: bool = True, read: bool = True) -> None:
        """`follow`: poll for changes (a what-if replay reads them once); `read`: reach Redis at
        all (checking a config does not: it finds no consumers)."""
        self.settings = settings
        self.source_key = source_key(settings)
        self.kept_in = f"redis {without_password(settings.url or '')} ({settings.namespace}-consumers)"
        self.version: Version = ["", -1]
        """The version served (number -1: none seen yet)."""
        self.on_change: Callable[[], None] = lambda: None
        """Called (from the polling thread) when a new version is served."""
        self._current = Consumers()
        self._client = connect(settings)
        self._outage = Outage(f"consumers in {self.kept_in}")
        self._stopped = threading.Event()
        if read:
            self._poll()  # a starting gateway serves them from its first request
        if read and follow:
            threading.Thread(target=self._poll_forever, name="mitmgateway consumers", daemon=True).start()

    def find(self, credential_type: str, credential_id: str) -> Authenticated | None:
        return self._current.find(credential_type, credential_id)

    def close(self) -> None:
        self._stopped.set()
        self._client.close()

    def _poll_forever(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            self._poll()

    def _poll(self) -> None:
        document_key, version_key, _lock, generation_key = redis_keys(self.settings)
        try:
            generation, number = self._client.mget(generation_key, version_key)
            version: Version = [(generation or b"").decode(), int(number or 0)]
            raw = self._client.get(document_key) if version != self.version else None
        except (RedisError, OSError, ValueError) as e:
            seen = "the consumers last seen" if self.version[1] >= 0 else "no consumers (none seen yet)"
            self._outage.failed(e, f"serving {seen}")
            return
        self._outage.recovered()
        if version == self.version:
            return
        try:
            consumers = parse_consumers(json.loads(raw) if raw else {"consumers": {}}, Path(self.source_key))
        except (ValueError, ConfigError) as e:
            # Only a writer that went around the admin API can store what the loader refuses.
            logger.error(
                "consumers in %s: version %s refused, serving the last good one: %s", self.kept_in, version, e
            )
        else:
            self._current = consumers
        self.version = version
        self.on_change()
