"""Changing a config file in place, as a person would: its comments and key order kept where the
change does not touch them, the new text swapped in whole (a reader, and the gateway's watcher,
never see half of it), one writer at a time.

The admin API and ``mitmgateway consumers`` write through here. ruamel.yaml (a dependency of
mitmproxy's already) round-trips YAML with its comments; PyYAML, which reads the config, drops them.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from .errors import ConfigError


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # long values (hashes, regexes) stay on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def read_editable(file: Path, empty: dict[str, Any]) -> CommentedMap:
    """The document in `file` as a mapping that keeps its comments (`empty` if there is no file)."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        return CommentedMap(empty)
    try:
        document = _yaml().load(text)
    except YAMLError as e:
        raise ConfigError("", f"cannot be read: {e}", str(file)) from None
    if document is None:
        return CommentedMap(empty)
    if not isinstance(document, CommentedMap):
        raise ConfigError("", "must be a mapping", str(file))
    return document


def plain(value: Any) -> Any:
    """`value` as the dicts, lists and scalars the config loader reads."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def block(value: Any) -> Any:
    """`value` (from JSON) as mappings and lists written in block style: inside a flow-style
    ``{...}``, ruamel leaves some strings (``/x?``) unquoted that PyYAML then cannot read."""
    if isinstance(value, dict):
        mapping = CommentedMap((k, block(v)) for k, v in value.items())
        mapping.fa.set_block_style()
        return mapping
    if isinstance(value, list):
        sequence = CommentedSeq(block(v) for v in value)
        sequence.fa.set_block_style()
        return sequence
    return value


def dump(document: CommentedMap) -> str:
    out = io.StringIO()
    _yaml().dump(document, out)
    return out.getvalue()


def replace_file(file: Path, text: str, check: Callable[[Path], None]) -> None:
    """Write `text` beside `file`, `check` it there (say, load it as the gateway would: a
    ConfigError leaves `file` as it was), then swap it in by an atomic replace. A new file is made
    owner-readable only (these files hold credential hashes); an existing one keeps its mode."""
    fd, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=file.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            check(Path(temporary))
        except ConfigError as e:
            if e.file != temporary:
                raise
            raise ConfigError(e.path, e.reason, str(file), e.line, e.column) from None
        if file.exists():
            os.chmod(temporary, stat.S_IMODE(file.stat().st_mode))
        os.replace(temporary, file)
    except BaseException:
        os.unlink(temporary)
        raise


@contextmanager
def one_writer(folder: Path) -> Iterator[None]:
    """Hold the folder's lock: one read-change-write at a time, across processes (an admin API
    and an operator's ``mitmgateway consumers`` at once)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
