"""Running a pipeline: its steps in order, each with an optional condition; the first answer ends it
(unless its step only reports: ``mode: report``)."""

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
    reporting: bool = False
    """``mode: report``: an answer the step gives is recorded in the decision, not sent, and the
    pipeline goes on (to try a rule on live traffic before enforcing it)."""
    reads_body: bool = False
    """Its condition reads the request body (conditions.reads_body)."""


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]

    @functools.cached_property
    def reads_body(self) -> bool:
        """Whether a step's condition reads the request body: the pipeline then runs once the
        body has arrived (held in memory, up to ``limits.maxBufferedBodyBytes``)."""
        return any(step.reads_body for step in self.steps)

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
        flow = ctx.flow
        if start == 0 and ctx.timeline is not None:
            ctx.timeline.pipeline_started()
        for index in range(start, len(self.steps)):
            step = self.steps[index]
            if step.condition is not None and not step.condition(ctx):
                ctx.record_step(step.policy_name, "skipped")
                continue
            before = _Before(ctx) if step.reporting else None
            if step.policy.authenticates and ctx.recorded_identity is not None:
                pending = ctx.recorded_identity(ctx, step)
            else:
                pending = step.policy.handle(ctx)
            if pending is not None:
                return self._run_after(ctx, index, pending, before)
            if flow.response is None:
                ctx.record_step(step.policy_name, "passed")
            elif before is not None:
                before.report(ctx, step)
            else:
                ctx.record_step(step.policy_name, "answered")
                return step.policy_name
        return None

    async def _run_after(
        self, ctx: RequestContext, index: int, pending: Awaitable[None], before: _Before | None
    ) -> str | None:
        await pending
        step = self.steps[index]
        if ctx.flow.response is None:
            ctx.record_step(step.policy_name, "passed")
        elif before is not None:
            before.report(ctx, step)
        else:
            ctx.record_step(step.policy_name, "answered")
            return step.policy_name
        rest = self.run(ctx, index + 1)
        return rest if rest is None or isinstance(rest, str) else await rest


class _Before:
    """What a step in ``mode: report`` may change in the decision (what it found, who the client
    is, a cache hit), kept so that an answer it gives leaves the request as it found it."""

    __slots__ = ("data", "user")

    def __init__(self, ctx: RequestContext) -> None:
        self.data = dict(ctx.decision.data)
        self.user = ctx.user

    def report(self, ctx: RequestContext, step: Step) -> None:
        """Record the answer the step gave, instead of sending it."""
        decision, response = ctx.decision, ctx.flow.response
        assert response is not None
        status, reason = response.status_code, decision.why()
        decision.data.clear()
        decision.data.update(self.data)
        decision.add_report(step.policy_name, status, reason)
        ctx.record_step(step.policy_name, "reported")
        ctx.user = self.user
        ctx.flow.response = None
