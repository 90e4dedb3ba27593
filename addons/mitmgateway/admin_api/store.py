"""The files the admin API reads and changes: consumers.yml and gateway.config.yml, edited in place.

A change is read, made and written under one lock, checked as the gateway will load it (an
invalid result is a 400 naming the file, line and key path, and the file is not touched) and,
before the admin API answers, served: `applied` waits until the gateway has reloaded the file, so
a script that creates a credential and calls an API with it next is not refused in between.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from ..config.editing import dump, one_writer, plain, read_editable, replace_file
from ..config.errors import ConfigError
from ..config.source import load_document
from ..consumers import parse_consumers
from .routes import AdminError

Applied = Callable[[Path], None]
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
        self.applied(self.file)


def check_consumers_file(candidate: Path) -> None:
    """Load `candidate` as the gateway loads its consumers file (a ConfigError if it would not)."""
    document = load_document(candidate)
    try:
        parse_consumers(document.data, candidate)
    except ConfigError as e:
        raise e.in_file(str(candidate), document.where) from None


class ConsumerFile(EditedFile):
    def __init__(self, file: Path, applied: Applied) -> None:
        super().__init__(file, check_consumers_file, applied, CONSUMERS_HEADER)

    def read(self) -> CommentedMap:
        document = super().read()
        consumers = document.get("consumers")
        if consumers is None:
            document["consumers"] = consumers = CommentedMap()
        if not isinstance(consumers, CommentedMap):
            raise AdminError(500, f"{self.file}: consumers must be a mapping")
        for name, entry in consumers.items():
            if entry is None:  # `alice:` alone is a consumer with nothing set
                consumers[name] = CommentedMap()
        return document
