"""Typed parsing of config mappings into frozen dataclasses.

A policy's action, a condition's parameters and every section of the config are declared as frozen
dataclasses whose fields carry the config key they read (``option("windowMs", 60000)``). One
function, `parse_fields`, checks a mapping against such a class: unknown keys, missing required
keys and wrong types are refused with the key path, so every part of the config is validated the
same way and once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from ..headers import is_header_name
from .errors import ConfigError, KeyPath

T = TypeVar("T")

Parser = Callable[[Any, KeyPath], Any]
"""Turns a raw config value into the field's value, raising ConfigError with the key path."""


def option(key: str, default: Any = dataclasses.MISSING, *, parse: Parser | None = None) -> Any:
    """A dataclass field read from config key `key`, optionally through a custom parser."""
    return dataclasses.field(default=default, metadata={"key": key, "parse": parse})


def describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value))
    if kind:
        return f"{kind} {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def require_mapping(raw: Any, path: KeyPath) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be a mapping, got {describe(raw)}")
    return raw


def require_list(raw: Any, path: KeyPath) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(path, f"must be a list, got {describe(raw)}")
    return raw


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f", did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, name: str, choices: typing.Iterable[str], listed: str = "known") -> str:
    """``unknown KIND 'NAME' (known: ...)``, with a "did you mean" for a near miss."""
    choices = list(choices)
    return f"unknown {kind} {name!r}{_did_you_mean(name, choices)} ({listed}: {', '.join(choices) or 'none'})"


def check_unknown_keys(raw: Mapping[str, Any], accepted: typing.Iterable[str], path: KeyPath) -> None:
    accepted = list(accepted)
    for key in raw:
        if key not in accepted:
            hint = _did_you_mean(str(key), accepted)
            choices = ", ".join(accepted) or "none"
            raise ConfigError(path.key(str(key)), f"unknown key{hint} (accepted: {choices})")


# Resolved only for fields without a parser: the others may name types that exist for type
# checkers only.
_field_types = functools.cache(typing.get_type_hints)


def parse_fields(cls: type[T], raw: Any, path: KeyPath) -> T:
    """Build dataclass `cls` from mapping `raw`, refusing unknown keys and wrong types."""
    raw = require_mapping(raw, path)
    by_key = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    check_unknown_keys(raw, by_key, path)
    values: dict[str, Any] = {}
    for key, f in by_key.items():
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(path.key(key), "is required")
            continue
        parse = f.metadata.get("parse")
        value, where = raw[key], path.key(key)
        values[f.name] = parse(value, where) if parse else check_type(_field_types(cls)[f.name], value, where)
    return cls(**values)


def check_type(expected: Any, value: Any, path: KeyPath) -> Any:
    """Check `value` against a simple annotation: scalars, Optional, Literal, tuple[X, ...]."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return check_type(inner, value, path)
    if origin is Literal:
        choices = typing.get_args(expected)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, choices))}, got {describe(value)}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(expected)[:1]
        items = [value] if isinstance(value, str) else require_list(value, path)
        return tuple(check_type(item, v, path.index(i)) for i, v in enumerate(items))
    value = _coerced(expected, value)
    if expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"must be a number, got {describe(value)}")
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"must be an integer, got {describe(value)}")
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"must be true or false, got {describe(value)}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"must be a string, got {describe(value)}")
    raise TypeError(
        f"parse_fields cannot check {expected!r}; give the field a parser"
    )  # a bug, not bad input


_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*")


def _coerced(expected: Any, value: Any) -> Any:
    """A scalar of another type read as `expected`, as Express Gateway's validator (ajv with
    ``coerceTypes``) reads it: ``"1"`` is 1, ``"true"`` is true, 1 is ``"1"``; anything else as is.
    Unlike ajv, null is never coerced: an empty YAML value is a mistake more often than a 0."""
    if expected in (int, float):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            number = float(value)
            if number.is_integer():
                return int(number)
            return number if expected is float else value
    elif expected is bool:
        if value in ("true", "false"):
            return value == "true"
        if type(value) is int and value in (0, 1):
            return bool(value)
    elif expected is str and isinstance(value, bool | int | float):
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return value


def non_negative(value: Any, path: KeyPath) -> int:
    number = check_type(int, value, path)
    if number < 0:
        raise ConfigError(path, f"must be 0 or more, got {number}")
    return number


def positive(value: Any, path: KeyPath) -> int:
    number = check_type(int, value, path)
    if number <= 0:
        raise ConfigError(path, f"must be greater than 0, got {number}")
    return number


_SIZE = re.compile(r"\s*(\d+)\s*([kmg]?)b?\s*", re.IGNORECASE)


def byte_size(value: Any, path: KeyPath) -> int:
    """A size in bytes: an integer, or a string such as ``"16kb"`` or ``"10mb"`` (units of 1024)."""
    if isinstance(value, str):
        size = _SIZE.fullmatch(value)
        if size is None:
            raise ConfigError(path, f"must be a size such as 16384, '16kb' or '10mb', got {value!r}")
        return int(size[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[size[2].lower()]
    return non_negative(value, path)


def header_name(value: Any, path: KeyPath) -> str:
    """A name a header can have (a token: no spaces, colons or line breaks)."""
    name = check_type(str, value, path)
    if not is_header_name(name):
        raise ConfigError(path, f"{name!r} is not a valid header name")
    return name


def http_methods(value: Any, path: KeyPath) -> frozenset[str]:
    """EG accepts methods as ``"GET,POST"`` or as a list."""
    if isinstance(value, str):
        items = [m.strip() for m in value.split(",")]
    else:
        items = [check_type(str, m, path.index(i)).strip() for i, m in enumerate(require_list(value, path))]
    methods = frozenset(m.upper() for m in items if m)
    if not methods:
        raise ConfigError(path, "must name at least one HTTP method")
    return methods


def http_status(value: Any, path: KeyPath) -> int:
    status = check_type(int, value, path)
    if not 100 <= status <= 599:
        raise ConfigError(path, f"must be an HTTP status code (100-599), got {status}")
    return status


def not_supported_yet(what: str) -> Parser:
    """For EG keys we know but do not implement: refuse them by name rather than ignore them."""

    def refuse(value: Any, path: KeyPath) -> Any:
        raise ConfigError(path, f"{what} is not supported yet")

    return refuse


def tcp_port(value: Any, path: KeyPath) -> int:
    port = check_type(int, value, path)
    if not 0 < port < 65536:
        raise ConfigError(path, f"must be a TCP port (1-65535), got {port}")
    return port
