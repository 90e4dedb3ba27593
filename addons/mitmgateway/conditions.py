"""Every pipeline condition, compiled at config load into a predicate over the request context.

``condition: {name: pathExact, path: /status}`` becomes a plain function; nesting (allOf, oneOf,
not) becomes closures over compiled children, so evaluating a condition parses nothing. A
condition that reads the request body (json-schema, or one holding it) says so (`reads_body`):
its pipeline then runs once the body has arrived.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config.errors import ConfigError, KeyPath
from .config.schema import (
    check_type,
    http_methods,
    option,
    parse_fields,
    require_list,
    require_mapping,
    unknown,
)
from .expressions import REQUEST_MEMBERS, compile_condition
from .json_schema import JsonSchema, json_schema
from .routing import compile_regex

if TYPE_CHECKING:
    from .context import RequestContext

Condition = Callable[["RequestContext"], bool]


def reads_body(condition: Condition) -> bool:
    """Whether `condition` (or one it holds) reads the request body."""
    return getattr(condition, "reads_body", False)


def _holding(combined: Condition, children: tuple[Condition, ...]) -> Condition:
    """`combined`, marked as reading the body if one of `children` does."""
    if any(reads_body(child) for child in children):
        combined.reads_body = True  # type: ignore[attr-defined]
    return combined


def _conditions(value: Any, path: KeyPath) -> tuple[Condition, ...]:
    items = require_list(value, path)
    if not items:
        raise ConfigError(path, "must list at least one condition")
    return tuple(parse_condition(item, path.index(i)) for i, item in enumerate(items))


def _condition(value: Any, path: KeyPath) -> Condition:
    return parse_condition(value, path)


@dataclass(frozen=True)
class _NoParams:
    pass


@dataclass(frozen=True)
class _Children:
    conditions: tuple[Condition, ...] = option("conditions", parse=_conditions)


@dataclass(frozen=True)
class _Child:
    condition: Condition = option("condition", parse=_condition)


@dataclass(frozen=True)
class _PathExact:
    path: str = option("path")


@dataclass(frozen=True)
class _PathMatch:
    pattern: str = option("pattern")


@dataclass(frozen=True)
class _Methods:
    methods: frozenset[str] = option("methods", parse=http_methods)


@dataclass(frozen=True)
class _HostMatch:
    pattern: str = option("pattern")


_path = REQUEST_MEMBERS["path"]


def _always(_: Any, __: KeyPath) -> Condition:
    return lambda ctx: True


def _never(_: Any, __: KeyPath) -> Condition:
    return lambda ctx: False


def _all_of(params: _Children, _: KeyPath) -> Condition:
    children = params.conditions
    return _holding(lambda ctx: all(c(ctx) for c in children), children)


def _one_of(params: _Children, _: KeyPath) -> Condition:
    # EG's oneOf is "any of", not exclusive-or.
    children = params.conditions
    return _holding(lambda ctx: any(c(ctx) for c in children), children)


def _not(params: _Child, _: KeyPath) -> Condition:
    child = params.condition
    return _holding(lambda ctx: not child(ctx), (child,))


def _path_exact(params: _PathExact, _: KeyPath) -> Condition:
    expected = params.path
    return lambda ctx: _path(ctx) == expected


def _path_match(params: _PathMatch, path: KeyPath) -> Condition:
    regex = compile_regex(params.pattern, path.key("pattern"))
    return lambda ctx: regex.search(_path(ctx)) is not None


def _method(params: _Methods, _: KeyPath) -> Condition:
    methods = params.methods
    return lambda ctx: ctx.flow.request.method.upper() in methods


def _host_match(params: _HostMatch, path: KeyPath) -> Condition:
    regex = compile_regex(fnmatch.translate(params.pattern.lower()), path.key("pattern"))
    return lambda ctx: regex.match(ctx.hostname) is not None


def _authenticated(_: Any, __: KeyPath) -> Condition:
    return lambda ctx: ctx.user is not None


def _anonymous(_: Any, __: KeyPath) -> Condition:
    return lambda ctx: ctx.user is None


def _tls_client_authenticated(_: Any, __: KeyPath) -> Condition:
    return lambda ctx: ctx.client_certificate is not None and ctx.client_certificate.verified


@dataclass(frozen=True)
class _Expression:
    expression: str = option("expression")


def _expression(params: _Expression, path: KeyPath) -> Condition:
    return compile_condition(params.expression, path.key("expression"))


CONDITIONS: dict[str, tuple[type, Callable[[Any, KeyPath], Condition]]] = {
    "always": (_NoParams, _always),
    "never": (_NoParams, _never),
    "allOf": (_Children, _all_of),
    "oneOf": (_Children, _one_of),
    "not": (_Child, _not),
    "pathExact": (_PathExact, _path_exact),
    "pathMatch": (_PathMatch, _path_match),
    "method": (_Methods, _method),
    "hostMatch": (_HostMatch, _host_match),
    "authenticated": (_NoParams, _authenticated),
    "anonymous": (_NoParams, _anonymous),
    "tlsClientAuthenticated": (_NoParams, _tls_client_authenticated),
    "expression": (_Expression, _expression),
    "json-schema": (JsonSchema, json_schema),
}

NOT_YET: dict[str, str] = {}


def register_condition(name: str, params: type, build: Callable[[Any, KeyPath], Condition]) -> None:
    """Make a condition usable by name: `params` is a frozen dataclass of its parameters (read with
    config.schema.option, as a policy's action), `build(params, key_path)` returns the predicate."""
    CONDITIONS[name] = (params, build)


def parse_condition(raw: Any, path: KeyPath) -> Condition:
    """Compile ``{name: ..., ...params}`` into a predicate, or refuse it with its key path."""
    raw = require_mapping(raw, path)
    if "name" not in raw:
        raise ConfigError(path.key("name"), "is required: every condition names its kind")
    name = check_type(str, raw["name"], path.key("name"))
    if name in NOT_YET:
        raise ConfigError(path.key("name"), NOT_YET[name])
    if name not in CONDITIONS:
        raise ConfigError(path.key("name"), unknown("condition", name, CONDITIONS))
    params_type, build = CONDITIONS[name]
    params = parse_fields(params_type, {k: v for k, v in raw.items() if k != "name"}, path)
    return build(params, path)
