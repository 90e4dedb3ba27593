"""request-transformer and response-transformer (Express Gateway's): add and remove headers and
JSON body fields, each added value an expression (see expressions.py).

``headers: {add: {x-gw: "'yes'", x-user: user.sub}, remove: [x-internal]}`` and the same under
``body``. A body that is not a JSON object passes through untouched; Content-Length follows the new
body. The request body is changed once it has all arrived; the response body once it has been read
(only a step with a ``body`` part makes the gateway wait for the whole response).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from ..config.errors import KeyPath
from ..config.schema import header_name, option, parse_fields, require_mapping
from ..context import RequestContext
from ..expressions import Evaluator, compile_expression
from ..headers import single_line
from .base import BuildContext, Policy, register_policy


def _additions(value: Any, path: KeyPath) -> tuple[tuple[str, Evaluator], ...]:
    return tuple(
        (str(name), compile_expression(source, path.key(str(name))))
        for name, source in require_mapping(value, path).items()
    )


def _header_additions(value: Any, path: KeyPath) -> tuple[tuple[str, Evaluator], ...]:
    additions = _additions(value, path)
    for name, _ in additions:
        header_name(name, path.key(name))
    return additions


@dataclass(frozen=True)
class Changes:
    add: tuple[tuple[str, Evaluator], ...] = option("add", (), parse=_additions)
    remove: tuple[str, ...] = option("remove", ())


@dataclass(frozen=True)
class HeaderChanges(Changes):
    add: tuple[tuple[str, Evaluator], ...] = option("add", (), parse=_header_additions)


@dataclass(frozen=True)
class TransformerAction:
    headers: HeaderChanges | None = option(
        "headers", None, parse=lambda value, path: parse_fields(HeaderChanges, value, path)
    )
    body: Changes | None = option("body", None, parse=lambda value, path: parse_fields(Changes, value, path))


def _evaluated(ctx: RequestContext, additions: tuple[tuple[str, Evaluator], ...]) -> list[tuple[str, Any]]:
    return [(name, value(ctx)) for name, value in additions]


def change_headers(message: http.Message, remove: tuple[str, ...], add: list[tuple[str, Any]]) -> None:
    for name in remove:
        message.headers.pop(name, None)
    for name, value in add:
        if value is None:
            message.headers.pop(name, None)  # never the client's own copy instead
        else:
            message.headers[name] = single_line(value)


def change_json_body(message: http.Message, remove: tuple[str, ...], add: list[tuple[str, Any]]) -> None:
    if "json" not in message.headers.get("content-type", "").lower():
        return
    try:
        document = json.loads(message.get_content(strict=False) or b"")
    except ValueError:
        return  # not JSON after all: untouched
    if not isinstance(document, dict):
        return
    for name in remove:
        document.pop(name, None)
    for name, value in add:
        document[name] = value
    message.set_content(json.dumps(document, separators=(",", ":")).encode())
    for stale in ("ETag", "Content-MD5", "Digest"):  # they described the body as it was
        message.headers.pop(stale, None)


class _Transformer(Policy):
    Action = TransformerAction

    def __init__(self, action: TransformerAction, build: BuildContext) -> None:
        self.action = action


@register_policy
class RequestTransformerPolicy(_Transformer):
    name = "request-transformer"

    def handle(self, ctx: RequestContext) -> None:
        request = ctx.flow.request
        headers, body = self.action.headers, self.action.body
        if headers is not None:
            change_headers(request, headers.remove, _evaluated(ctx, headers.add))
        if body is not None:
            add = _evaluated(ctx, body.add)  # evaluated now, applied once the body has arrived
            ctx.on_request_body(lambda: change_json_body(request, body.remove, add))


@register_policy
class ResponseTransformerPolicy(_Transformer):
    name = "response-transformer"

    def handle(self, ctx: RequestContext) -> None:
        headers, body = self.action.headers, self.action.body
        if headers is not None:
            header_add = _evaluated(ctx, headers.add)
            ctx.on_response(lambda response: change_headers(response, headers.remove, header_add))
        if body is not None:
            body_add = _evaluated(ctx, body.add)
            ctx.on_response_body(lambda response: change_json_body(response, body.remove, body_add))
