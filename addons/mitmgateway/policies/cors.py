"""cors: the gateway answers preflights and decorates actual responses (Express Gateway's cors).

Parameters and defaults as EG's (the ``cors`` package): ``origin`` [*] (``*``, ``true`` to reflect
the request's Origin, one origin, or a list whose entries may be regular expressions written
``/.../``), ``methods`` [GET,HEAD,PUT,PATCH,POST,DELETE], ``allowedHeaders`` (default: those the
preflight asks for), ``exposedHeaders``, ``credentials`` [false], ``maxAge``, ``preflightContinue``
[false] (pass preflights on to the upstream), ``optionsSuccessStatus`` [204].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from ..config.errors import ConfigError, KeyPath
from ..config.schema import check_type, http_methods, http_status, non_negative, option
from ..context import RequestContext
from ..headers import set_headers
from ..routing import compile_regex
from .base import BuildContext, Policy, register_policy

DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"

OriginRule = str | re.Pattern[str]


def _origins(value: Any, path: KeyPath) -> bool | tuple[OriginRule, ...]:
    if isinstance(value, bool):
        return value
    items = [value] if isinstance(value, str) else check_type(tuple[str, ...], value, path)
    rules: list[OriginRule] = []
    for i, item in enumerate(items):
        if len(item) > 2 and item.startswith("/") and item.endswith("/"):
            rules.append(compile_regex(item[1:-1], path.index(i) if not isinstance(value, str) else path))
        else:
            rules.append(item)
    return tuple(rules)


def _header_list(value: Any, path: KeyPath) -> str:
    return ",".join(check_type(tuple[str, ...], value, path))


@dataclass(frozen=True)
class CorsAction:
    origin: bool | tuple[OriginRule, ...] = option("origin", ("*",), parse=_origins)
    methods: frozenset[str] | None = option("methods", None, parse=http_methods)
    allowed_headers: str | None = option("allowedHeaders", None, parse=_header_list)
    exposed_headers: str | None = option("exposedHeaders", None, parse=_header_list)
    credentials: bool = option("credentials", False)
    max_age: int | None = option("maxAge", None, parse=non_negative)
    preflight_continue: bool = option("preflightContinue", False)
    options_success_status: int = option("optionsSuccessStatus", 204, parse=http_status)


@register_policy
class CorsPolicy(Policy):
    name = "cors"
    Action = CorsAction

    def __init__(self, action: CorsAction, build: BuildContext) -> None:
        self.action = action
        if action.credentials and action.origin in (("*",), True):
            raise ConfigError(
                build.path.key("credentials"),
                "credentials need a list of trusted origins (with origin '*' browsers refuse them; "
                "origin: true would hand them to any site)",
            )
        self.methods = ",".join(sorted(action.methods)) if action.methods else DEFAULT_METHODS

    def allowed_origin(self, origin: str | None) -> tuple[str | None, bool]:
        """The Access-Control-Allow-Origin value, and whether it depends on the request's Origin."""
        rules = self.action.origin
        if rules is False:
            return None, False
        if rules is True:
            return origin, True
        if rules == ("*",):
            return "*", False
        if len(rules) == 1 and isinstance(rules[0], str):
            return rules[0], True
        if origin is not None and any(
            rule == origin if isinstance(rule, str) else rule.fullmatch(origin) for rule in rules
        ):
            return origin, True
        return None, True

    def handle(self, ctx: RequestContext) -> None:
        request = ctx.flow.request
        action = self.action
        allow, varies = self.allowed_origin(request.headers.get("Origin"))
        headers: list[tuple[str, str]] = []
        if allow is not None:
            headers.append(("Access-Control-Allow-Origin", allow))
        if varies:
            headers.append(("Vary", "Origin"))
        if action.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        if request.method == "OPTIONS":
            headers.append(("Access-Control-Allow-Methods", self.methods))
            allowed = action.allowed_headers
            if allowed is None:
                allowed = request.headers.get("Access-Control-Request-Headers")
                headers.append(("Vary", "Access-Control-Request-Headers"))
            if allowed:
                headers.append(("Access-Control-Allow-Headers", allowed))
            if action.max_age is not None:
                headers.append(("Access-Control-Max-Age", str(action.max_age)))
            if not action.preflight_continue:
                answer = http.Response.make(action.options_success_status, b"", _fields(headers))
                answer.headers["Content-Length"] = "0"
                ctx.answer(answer)
                return
        elif action.exposed_headers:
            headers.append(("Access-Control-Expose-Headers", action.exposed_headers))
        fields = _fields([h for h in headers if h[0] != "Vary"])
        vary = [value for name, value in headers if name == "Vary"]

        def decorate(response: http.Response) -> None:
            set_headers(response, fields)
            if vary:
                # Added to what the upstream varies on, never replacing it.
                response.headers["Vary"] = ", ".join([*response.headers.get_all("Vary"), *vary])

        ctx.on_response(decorate)


def _fields(headers: list[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    """Header fields, with the Vary values joined into one."""
    vary = ", ".join(value for name, value in headers if name == "Vary")
    fields = [(name.encode(), value.encode()) for name, value in headers if name != "Vary"]
    return (*fields, (b"Vary", vary.encode())) if vary else tuple(fields)
