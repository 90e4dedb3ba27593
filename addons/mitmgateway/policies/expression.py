"""expression: Express Gateway's ``jscode``, as assignments in our safe expression language.

``jscode: "req.url = '/v2' + req.url; req.headers['x-tier'] = user.tier"`` changes the request on
its way upstream; see expressions.py for the grammar. Parsed at config load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import option
from ..context import RequestContext
from ..expressions import Assignment, compile_assignments
from .base import BuildContext, Policy, register_policy


@dataclass(frozen=True)
class ExpressionAction:
    jscode: tuple[Assignment, ...] = option("jscode", parse=compile_assignments)


@register_policy
class ExpressionPolicy(Policy):
    name = "expression"
    Action = ExpressionAction

    def __init__(self, action: ExpressionAction, build: BuildContext) -> None:
        self.assignments = action.jscode

    def handle(self, ctx: RequestContext) -> None:
        for assign in self.assignments:
            assign(ctx)
