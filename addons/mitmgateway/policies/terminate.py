"""terminate: answer with a fixed status and message (Express Gateway's, same defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..answers import make_answer
from ..config.schema import http_status, option
from ..context import RequestContext
from .base import BuildContext, Policy, register_policy


@dataclass(frozen=True)
class TerminateAction:
    status_code: int = option("statusCode", 400, parse=http_status)
    message: str = option("message", "Terminated")


@register_policy
class TerminatePolicy(Policy):
    name = "terminate"
    Action = TerminateAction

    def __init__(self, action: TerminateAction, build: BuildContext) -> None:
        self.action = action

    def handle(self, ctx: RequestContext) -> None:
        ctx.answer(make_answer(ctx.flow.request, self.action.status_code, self.action.message))
