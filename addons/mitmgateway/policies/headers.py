"""headers: add request headers for the upstream, each value an expression (Express Gateway's).

``forwardHeaders: {X-Consumer: consumer.id, X-Request: requestID, X-Gw: "'yes'"}`` with
``headersPrefix`` prepended to each name. A value that evaluates to null sets nothing (and
removes a client's copy: the gateway speaks for these headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.errors import KeyPath
from ..config.schema import header_name, option, require_mapping
from ..context import RequestContext
from ..expressions import Evaluator, compile_expression
from ..headers import set_values
from .base import BuildContext, Policy, register_policy


def _header_expressions(value: Any, path: KeyPath) -> tuple[tuple[str, Evaluator], ...]:
    pairs = []
    for name, source in require_mapping(value, path).items():
        name = header_name(name, path.key(str(name)))
        pairs.append((name, compile_expression(source, path.key(name))))
    return tuple(pairs)


@dataclass(frozen=True)
class HeadersAction:
    forward_headers: tuple[tuple[str, Evaluator], ...] = option(
        "forwardHeaders", (), parse=_header_expressions
    )
    headers_prefix: str = option("headersPrefix", "")


@register_policy
class HeadersPolicy(Policy):
    name = "headers"
    Action = HeadersAction

    def __init__(self, action: HeadersAction, build: BuildContext) -> None:
        prefixed = tuple((action.headers_prefix + name, value) for name, value in action.forward_headers)
        self.identity_headers = tuple(name for name, _ in prefixed)
        self.headers = tuple((name.encode(), value) for name, value in prefixed)

    def handle(self, ctx: RequestContext) -> None:
        set_values(ctx.flow.request, ((name, value(ctx)) for name, value in self.headers))
