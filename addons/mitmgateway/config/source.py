"""Reading a config file: YAML or JSON, duplicate keys refused, ``${VAR:-default}`` substituted."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ROOT, ConfigError, KeyPath

# Only names an environment variable can have: EG's templates such as ``${req.ip}`` in
# rateLimitBy must pass through untouched.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

FileSignature = tuple[int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """What tells one version of a file from the next (None: there is no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def listed_signature(path: Path) -> list[int] | None:
    """`file_signature` as JSON has it (what a pool's workers announce)."""
    signature = file_signature(path)
    return None if signature is None else list(signature)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a gateway config must not."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Two equal keys written in one mapping are an error; a key that overrides one brought in by
    # a merge key (``<<: *proxy``) is what merging is for, as js-yaml (Express Gateway's) reads it.
    written: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in written:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        written.add(key)
    loader.flatten_mapping(node)  # merged keys first, then the mapping's own, which win
    return {
        loader.construct_object(key_node, deep=True): loader.construct_object(value_node, deep=True)
        for key_node, value_node in node.value
    }


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


# PyYAML's words for the mistakes people make most, in plain ones.
_PLAIN_YAML = (
    (
        "mapping values are not allowed here",
        "a ':' where a value was expected (quote values with ': ')",
    ),
    ("found character '\\t' that cannot start any token", "a tab: YAML indents with spaces"),
    ("did not find expected key", "this line's indentation does not match the lines above it"),
    ("expected <block end>, but found", "this line's indentation does not match the lines above it"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
    ("found unhashable key", "a key that is a list or mapping"),
    ("expected ',' or '}'", "a '{' without its '}' (or a missing ',')"),
    ("expected ',' or ']'", "a '[' without its ']' (or a missing ',')"),
)


def _plain(problem: str) -> str:
    for words, plain in _PLAIN_YAML:
        if problem.startswith(words):
            return plain
    return problem


def _marks(node: yaml.Node | None, path: KeyPath, marks: dict[str, tuple[int, int]]) -> None:
    """Where each key path of the document was written (1-based line and column)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            child = path.key(key_node.value)
            marks.setdefault(child, (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            _marks(value_node, child, marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = path.index(i)
            marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _marks(item, child, marks)


_LAST_STEP = re.compile(r"(?:\.[^.\[\]]*|\[\d+\])\Z")


@dataclass(frozen=True)
class Document:
    """A parsed config file, and where each of its keys was written."""

    data: Any
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: str) -> tuple[int, int] | None:
        """The place of `path`, or of the nearest key above it that the file spells out."""
        while path:
            if path in self.marks:
                return self.marks[path]
            shorter = _LAST_STEP.sub("", path)
            if shorter == path:
                return None
            path = shorter
        return None


def read_document(path: Path) -> Document:
    """Parse the file as JSON (``.json``) or YAML; errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read the file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 text: {e}") from e
    if path.suffix.lower() == ".json":
        try:
            return Document(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError("", f"invalid JSON: {e.msg}", line=e.lineno, column=e.colno) from e
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        # An unclosed bracket is found where something else begins: point at the bracket.
        unclosed = str(e.context or "").startswith("while parsing a flow")
        mark = (e.context_mark if unclosed else None) or e.problem_mark or e.context_mark
        problem = _plain(str(e.problem or e.context))
        if mark is None:
            raise ConfigError("", f"invalid YAML: {problem}") from e
        raise ConfigError("", f"invalid YAML: {problem}", line=mark.line + 1, column=mark.column + 1) from e
    except yaml.YAMLError as e:
        raise ConfigError("", f"invalid YAML: {e}") from e
    finally:
        loader.dispose()
    marks: dict[str, tuple[int, int]] = {}
    _marks(node, ROOT, marks)
    return Document(data, marks)


def substitute_env(value: Any, env: Mapping[str, str], path: KeyPath = ROOT) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the document.

    A string that is one reference and nothing else takes the type its value reads as in YAML,
    so ``port: ${PORT:-8080}`` is the integer 8080.
    """
    if isinstance(value, str):
        return _substitute_string(value, env, path)
    if isinstance(value, list):
        return [substitute_env(v, env, path.index(i)) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: substitute_env(v, env, path.key(str(k))) for k, v in value.items()}
    return value


def _substitute_string(text: str, env: Mapping[str, str], path: KeyPath) -> Any:
    if "${" not in text:
        return text

    def lookup(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(path, f"environment variable {name} is not set and has no default")

    substituted = ENV_REFERENCE.sub(lookup, text)
    if ENV_REFERENCE.fullmatch(text):
        try:
            scalar = yaml.safe_load(substituted)
        except yaml.YAMLError:
            return substituted
        if isinstance(scalar, bool | int | float):
            return scalar
    return substituted


def load_document(path: Path, env: Mapping[str, str] | None = None) -> Document:
    """The file's document, environment references substituted; a ConfigError names the line."""
    document = read_document(path)
    try:
        data = substitute_env(document.data, os.environ if env is None else env)
    except ConfigError as e:
        raise e.in_file(str(path), document.where) from None
    return Document(data, document.marks)
