"""log: write a message to the gateway's log for each request (a template, as rateLimitBy's).

``message: "${req.method} ${req.path} from ${req.ip}"`` (EG evaluates it as a JavaScript template
string; ours takes the same ``${...}`` references, see templates.py). A reference without a value
is written as ``-``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config.schema import option
from ..context import RequestContext
from ..templates import Template, parse_template
from .base import BuildContext, Policy, register_policy

logger = logging.getLogger("mitmgateway.log")


@dataclass(frozen=True)
class LogAction:
    message: Template = option("message", parse=parse_template)


@register_policy
class LogPolicy(Policy):
    name = "log"
    Action = LogAction

    def __init__(self, action: LogAction, build: BuildContext) -> None:
        self.template = action.message

    def handle(self, ctx: RequestContext) -> None:
        logger.info("%s", self.template.render(ctx, missing="-"))
