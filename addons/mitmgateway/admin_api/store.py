"""The files the admin API reads and changes: consumers.yml and gateway.config.yml, edited in place.

A change is read, made and written under one lock, checked as the gateway will load it (an
invalid result is a 400 naming the file, line and key path, and the file is not touched) and,
before the admin API answers, served: `applied` waits until the gateway has reloaded the file, so
a script that creates a credential and calls an API with it next is not refused in between.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from redis.exceptions import RedisError
from ruamel.yaml.comments import CommentedMap

from ..config.companion_files import load_consumers
from ..config.editing import dump, one_writer, plain, read_editable, replace_file
from ..config.errors import ConfigError
from ..config.source import listed_signature
from ..consumers import parse_consumers
from ..shared_consumers import connect, redis_keys, served_since, source_key
from ..stores import StoreSettings
from .routes import AdminError

Applied = Callable[[str, Callable[[object], bool]], None]
"""`applied(source, is_served)` returns once the gateway serves what was written to `source` (a
file's path, consumers in Redis): once `is_served` holds for what each of its processes serves
of it (or it waited long enough)."""
CONSUMERS_HEADER = (
    "# Consumers of the gateway and their credentials (its admin API and mitmgateway consumers write here).\n"
)


class EditedFile:
    def __init__(self, file: Path, check: Callable[[Path], None], applied: Applied, header: str = "") -> None:
        """`check(candidate)` raises a ConfigError if the gateway would refuse the file;
        `header` starts a file this creates."""
        self.file = file
        self.check = check
        self.applied = applied
        self.header = header

    def read(self) -> CommentedMap:
        try:
            return read_editable(self.file, {})
        except ConfigError as e:
            raise AdminError(500, str(e)) from None

    @contextmanager
    def change(self) -> Iterator[CommentedMap]:
        """The document to change in the block; written, checked and served when it ends."""
        with one_writer(self.file.parent):
            header = "" if self.file.exists() else self.header
            document = self.read()
            yield document
            # A JSON file stays JSON (and has no comments to keep).
            text = (
                json.dumps(plain(document), indent=2) + "\n"
                if self.file.suffix == ".json"
                else dump(document)
            )
            try:
                replace_file(self.file, header + text, self.check)
            except ConfigError as e:
                raise AdminError(400, str(e)) from None
        # Served once the gateway serves the file as it is now: this write, or a later one.
        self.applied(str(self.file), lambda served: served == listed_signature(self.file))


def check_consumers_file(candidate: Path) -> None:
    """Load `candidate` as the gateway loads its consumers file (a ConfigError if it would not)."""
    load_consumers(candidate.parent, candidate.name)


class ConsumerStore(Protocol):
    """Where the admin API keeps consumers: consumers.yml, or a Redis."""

    def read(self) -> CommentedMap: ...

    def change(self) -> AbstractContextManager[CommentedMap]: ...


class ConsumerFile(EditedFile):
    def __init__(self, file: Path, applied: Applied) -> None:
        super().__init__(file, check_consumers_file, applied, CONSUMERS_HEADER)

    def read(self) -> CommentedMap:
        return with_consumers(super().read(), str(self.file))


def with_consumers(document: CommentedMap, where: str) -> CommentedMap:
    """`document` with a consumers mapping in which each consumer is a mapping."""
    consumers = document.get("consumers")
    if consumers is None:
        document["consumers"] = consumers = CommentedMap()
    if not isinstance(consumers, CommentedMap):
        raise AdminError(500, f"{where}: consumers must be a mapping")
    for name, entry in consumers.items():
        if entry is None:  # `alice:` alone is a consumer with nothing set
            consumers[name] = CommentedMap()
    return document


class SharedConsumerDocument:
    """The consumers kept in Redis (shared_consumers.py), as the admin API reads and changes them:
    one JSON document, written whole with its version incremented, under a Redis lock."""

    def __init__(self, settings: StoreSettings, applied: Applied) -> None:
        self.keys = redis_keys(settings)
        self.source_key = source_key(settings)
        self.applied = applied
        self._client = connect(settings)

    def read(self) -> CommentedMap:
        try:
            raw = self._client.get(self.keys[0])
        except (RedisError, OSError) as e:
            raise AdminError(503, f"the consumers' Redis is unavailable: {e}") from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as e:
            raise AdminError(500, f"{self.source_key}: the document is not JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("consumers", {}), dict):
            raise AdminError(500, f"{self.source_key}: consumers must be a mapping")
        # Mappings the handlers insert into, where a file's would keep their place.
        return with_consumers(
            CommentedMap({**data, "consumers": CommentedMap(data.get("consumers") or {})}), ""
        )

    @contextmanager
    def change(self) -> Iterator[CommentedMap]:
        document_key, version_key, lock_key, generation_key = self.keys
        lock = self._client.lock(lock_key, timeout=30, blocking_timeout=10)
        try:
            if not lock.acquire():
                raise AdminError(503, "another write to the consumers is under way; try again")
        except (RedisError, OSError) as e:
            raise AdminError(503, f"the consumers' Redis is unavailable: {e}") from None
        try:
            document = self.read()
            yield document
            data = plain(document)
            try:
                parse_consumers(data, Path(self.source_key))
            except ConfigError as e:
                raise AdminError(400, str(e)) from None
            try:
                pipeline = self._client.pipeline(transaction=True)
                # A generation of its own for a Redis that lost its data: a version counted
                # again from 0 is not taken for one already seen.
                pipeline.setnx(generation_key, uuid.uuid4().hex)
                pipeline.get(generation_key)
                pipeline.set(document_key, json.dumps(data))
                pipeline.incr(version_key)
                _, generation, _, number = pipeline.execute()
                written = [generation.decode(), number]
            except (RedisError, OSError) as e:
                raise AdminError(503, f"the consumers' Redis is unavailable: {e}") from None
        finally:
            with contextlib.suppress(RedisError, OSError):
                lock.release()
        self.applied(self.source_key, lambda served: served_since(served, written))
