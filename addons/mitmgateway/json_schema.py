"""The ``json-schema`` condition: the request body validated against a JSON Schema.

The schema is checked and compiled when the config loads, its every ``$ref`` resolved within it
(nothing is ever fetched); the body is read as Express Gateway's parsers read it (bodies.py), at
most 100 KiB. The condition says it reads the body (``reads_body``): its pipeline runs once the
body has arrived.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema

from .bodies import NOT_PARSED, clipped, parsed_request_body
from .config.errors import ConfigError, KeyPath
from .config.schema import option, require_mapping

if TYPE_CHECKING:
    from .context import RequestContext

logger = logging.getLogger("mitmgateway")

Condition = Callable[["RequestContext"], bool]


def _canonical(value: Any) -> Any:
    """A JSON value as uniqueItems compares it: 1 and 1.0 alike, keys in any order."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
    # jsonschema compares every pair of items: a 38 KB body of small objects took 10 s. A set of
    # canonical forms makes it one pass.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        key = json.dumps(_canonical(item), sort_keys=True)
        if key in seen:
            yield jsonschema.ValidationError(f"has non-unique elements ({clipped(key)} twice)")
            return
        seen.add(key)


def _schema(value: Any, path: KeyPath) -> jsonschema.protocols.Validator:
    schema = require_mapping(value, path)
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        base.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(
            path, f"not a valid JSON Schema: {e.message} (at schema{_where(e.absolute_path)})"
        ) from None
    # Every $ref resolved now, within the schema: nothing is ever fetched (jsonschema would fetch
    # an unknown one, on each request), and a wrong one is an error here, not at a request.
    resource = referencing.Resource.from_contents(
        schema, default_specification=referencing.jsonschema.DRAFT202012
    )
    uri = schema.get("$id") if isinstance(schema.get("$id"), str) else "urn:mitmgateway:json-schema"
    registry = referencing.Registry().with_resource(uri, resource).crawl()
    resolver = registry.resolver(base_uri=uri)
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise ConfigError(
                path, f"$ref {ref!r} names nothing within the schema (a $ref is never fetched)"
            ) from None
    validator_class = jsonschema.validators.extend(base, {"uniqueItems": _unique_items})
    return validator_class(schema, registry=registry, format_checker=base.FORMAT_CHECKER)


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
        return found + [ref for value in schema.values() for ref in _refs(value)]
    if isinstance(schema, list):
        return [ref for value in schema for ref in _refs(value)]
    return []


def _where(path: Any) -> str:
    return "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in path)


@dataclass(frozen=True)
class JsonSchema:
    schema: jsonschema.protocols.Validator = option("schema", parse=_schema)
    log_errors: bool = option("logErrors", False)


# The most of a body the condition reads (decoded): Express Gateway's body parsers' limit. A
# larger body does not validate; parsing and validating stay a few milliseconds of the loop.
_BODY_READ = 100 << 10


def json_schema(params: JsonSchema, path: KeyPath) -> Condition:
    validator, log_errors, where = params.schema, params.log_errors, str(path)

    def validates(ctx: RequestContext) -> bool:
        body = parsed_request_body(ctx.flow.request, _BODY_READ)
        if body is NOT_PARSED:
            if log_errors:
                logger.info("json-schema %s: the body is not JSON or a form of at most 100 KiB", where)
            return False
        error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        if error is None:
            return True
        if log_errors:
            logger.info(
                "json-schema %s: the body does not validate at $%s: %s",
                where,
                _where(error.absolute_path),
                error.message,
            )
        return False

    validates.reads_body = True  # type: ignore[attr-defined]  # (see conditions.reads_body)
    return validates
