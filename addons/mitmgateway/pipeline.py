"""Running a pipeline: its steps in order, each with an optional condition; the first answer ends it."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import RequestContext

if TYPE_CHECKING:
    from .conditions import Condition
    from .policies.base import Policy


@dataclass(frozen=True)
class Step:
    policy_name: str
    condition: Condition | None
    policy: Policy


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]

    @functools.cached_property
    def identity_headers(self) -> frozenset[bytes]:
        """Headers a step of this pipeline sets to say who the client is (lower case)."""
        return frozenset(h.lower().encode() for step in self.steps for h in step.policy.identity_headers)

    def run(self, ctx: RequestContext, start: int = 0) -> str | Coroutine[Any, Any, str | None] | None:
        """Run the steps in order (from `start`); the name of the policy that answered, if one did.

        Steps run synchronously until one returns an awaitable (a policy waiting on I/O, such as
        a shared rate-limit store); the rest then runs in the coroutine returned instead. Each
        step's outcome goes into the decision.
        """
        flow, decision = ctx.flow, ctx.decision
        for index in range(start, len(self.steps)):
            step = self.steps[index]
            if step.condition is not None and not step.condition(ctx):
                decision.add_step(step.policy_name, "skipped")
                continue
            if step.policy.authenticates and ctx.recorded_identity is not None:
                pending = ctx.recorded_identity(ctx, step)
            else:
                pending = step.policy.handle(ctx)
            if pending is not None:
                return self._run_after(ctx, index, pending)
            if flow.response is not None:
                decision.add_step(step.policy_name, "answered")
                return step.policy_name
            decision.add_step(step.policy_name, "passed")
        return None

    async def _run_after(self, ctx: RequestContext, index: int, pending: Awaitable[None]) -> str | None:
        await pending
        name = self.steps[index].policy_name
        if ctx.flow.response is not None:
            ctx.decision.add_step(name, "answered")
            return name
        ctx.decision.add_step(name, "passed")
        rest = self.run(ctx, index + 1)
        return rest if rest is None or isinstance(rest, str) else await rest
