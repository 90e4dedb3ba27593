"""Reading a config file: YAML or JSON, duplicate keys refused, ``${VAR:-default}`` substituted."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ROOT, ConfigError, KeyPath

# Only names an environment variable can have: EG's templates such as ``${req.ip}`` in
# rateLimitBy must pass through untouched.
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def read_document(path: Path) -> Any:
    """Parse the file as JSON (``.json``) or YAML; errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read the file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 text: {e}") from e
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError("", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"invalid YAML{where}: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError("", f"invalid YAML: {e}") from e


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


def load_document(path: Path, env: Mapping[str, str] | None = None) -> Any:
    return substitute_env(read_document(path), os.environ if env is None else env)
