"""What a what-if replay found: each request's before and after (`Replayed`), the transitions
they make grouped and counted (`Report.summary`), the same for machines (`Report.as_json`), and
the changed flows as a flow file mitmweb opens (`write_changed`)."""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from mitmproxy import http, io

from ..observe.access_log import iso_time
from .outcome import Outcome, changes, describe_change
from .recorded import Recorded

EXAMPLES = 3
"""Example requests shown under each transition."""
CHANGED_MARKER = ":warning:"
WHATIF_KEY = "gatewayWhatif"


@dataclass(frozen=True)
class Replayed:
    recorded: Recorded
    before: Outcome
    after: Outcome
    flow: http.HTTPFlow | None
    """The flow as the candidate decided it (kept where the decision changed)."""

    @property
    def changes(self) -> tuple[str, ...]:
        if self.before.indeterminate or self.after.indeterminate:
            return ()
        return changes(self.before, self.after)

    @property
    def indeterminate(self) -> str | None:
        return self.before.indeterminate or self.after.indeterminate

    @property
    def same_answer(self) -> bool:
        """Changed, but not in a way its few words show (the response, the forwarded request,
        the serviceEndpoint)."""
        return bool(self.changes) and self.before.label == self.after.label

    @property
    def transition(self) -> str:
        """``orders: proxied 200 → 401 by jwt``, with what else changed in brackets."""
        if self.indeterminate is not None:
            return f"indeterminate: {self.indeterminate}"
        before, after, found = self.before, self.after, self.changes
        scope = before.api_endpoint or after.api_endpoint or "no apiEndpoint"
        details = [
            f"{name} {a or '-'} → {b or '-'}"
            for name, a, b in (
                ("apiEndpoint", before.api_endpoint, after.api_endpoint),
                ("pipeline", before.pipeline, after.pipeline),
            )
            if name in found and a and b
        ]
        if before.label == after.label:
            # Where the answer is the same in a few words, what else changed.
            if "serviceEndpoint" in found:
                details.append(f"serviceEndpoint {before.service_endpoint} → {after.service_endpoint}")
            details += [f"{name} changed" for name in ("forwarded request", "response") if name in found]
        text = f"{scope}: {before.label} → {after.label}"
        return f"{text} ({'; '.join(details)})" if details else text

    def example(self) -> str:
        seen = self.recorded.describe()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(seen["time"])))  # type: ignore[arg-type]
        line = f"{seen['method']} {seen['host']}{seen['path']}  from {seen['client']}  at {when}Z"
        what = describe_change(self.before, self.after) if self.same_answer else ""
        return f"{line}  ({what})" if what else line

    def as_json(self) -> dict[str, Any]:
        seen = self.recorded.describe()
        entry: dict[str, Any] = {**seen, "time": iso_time(float(seen["time"]))}  # type: ignore[arg-type]
        if self.indeterminate is not None:
            entry.update(indeterminate=True, reason=self.indeterminate)
        else:
            entry["changes"] = list(self.changes)
        entry.update(before=self.before.as_json(), after=self.after.as_json(), transition=self.transition)
        return entry


class Expectations:
    """``--expect`` rules: transitions allowed to happen (shell-style patterns over the
    transition's text; ``->`` may stand for ``→``)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [p.replace("->", "→") for p in patterns]

    def allow(self, replayed: Replayed) -> bool:
        return any(fnmatch.fnmatchcase(replayed.transition, p) for p in self.patterns)


class Report:
    def __init__(self, replayed: list[Replayed], candidate: Path, baseline: Path | None) -> None:
        self.replayed = replayed
        self.candidate = candidate
        self.baseline = baseline
        self.changed = [r for r in replayed if r.changes]
        self.indeterminate = [r for r in replayed if r.indeterminate is not None]

    def unexpected(self, expectations: Expectations) -> list[Replayed]:
        return [r for r in (*self.changed, *self.indeterminate) if not expectations.allow(r)]

    def summary(self, expectations: Expectations) -> str:
        total = len(self.replayed)
        against = "the decisions recorded with them" if self.baseline is None else str(self.baseline)
        same_answer = sum(r.same_answer for r in self.changed)
        detail = f" ({same_answer:,} of them only in details)" if same_answer else ""
        lines = [
            f"whatif: {total:,} request{'s' * (total != 1)} replayed against {self.candidate} "
            f"(before: {against})",
            f"  {total - len(self.changed) - len(self.indeterminate):,} unchanged, "
            f"{len(self.changed):,} changed{detail}, {len(self.indeterminate):,} indeterminate",
        ]
        groups: dict[str, list[Replayed]] = defaultdict(list)
        for replayed in (*self.changed, *self.indeterminate):
            groups[replayed.transition].append(replayed)
        if groups:
            lines.append("")
        width = max((len(t) for t in groups), default=0)
        # Other answers first, then the same answers with other details, then what is unknown.
        for text, members in sorted(
            groups.items(),
            key=lambda g: (g[1][0].indeterminate is not None, g[1][0].same_answer, -len(g[1]), g[0]),
        ):
            allowed = " (expected)" if expectations.allow(members[0]) else ""
            count = f"{len(members):,} request{'s' * (len(members) != 1)}"
            lines.append(f"  {text:<{width}}  {count}{allowed}")
            lines += [f"      {m.example()}" for m in members[:EXAMPLES]]
        if any(None in (r.before.status, r.after.status) for r in self.changed):
            lines.append(
                "  ? proxied, but the recording has no answer from upstream (live, it was answered first)"
            )
        assumed = Counter(a for r in self.replayed for a in {*r.before.assumed, *r.after.assumed})
        if assumed:
            lines.append("")
            for what, n in sorted(assumed.items()):
                lines.append(f"  assumed for {n:,} request{'s' * (n != 1)}: {what}")
        return "\n".join(lines)

    def as_json(self) -> list[dict[str, Any]]:
        return [r.as_json() for r in self.replayed if r.changes or r.indeterminate is not None]

    def write_json(self, path: Path) -> None:
        with _private_file(path) as file:  # the paths may hold credentials
            file.write((json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n").encode())

    def write_changed(self, path: Path) -> None:
        """The changed (and indeterminate) flows as the candidate decided them, marked, each
        commented with its before → after."""
        with _private_file(path) as file:  # the flows hold credentials
            writer = io.FlowWriter(file)
            for replayed in (*self.changed, *self.indeterminate):
                flow = replayed.flow
                assert flow is not None
                flow.marked = CHANGED_MARKER
                flow.comment = f"whatif: {replayed.transition}"
                flow.metadata[WHATIF_KEY] = replayed.as_json()
                writer.add(flow)


def _private_file(path: Path) -> BinaryIO:
    """`path`, written afresh and readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


class Progress:
    """Flows done, rate and time left, on a terminal (standard error); nothing when piped."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.shown = stream.isatty() and total > 0
        self.started = self.last = time.monotonic()

    def advance(self, done: int) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate else 0
        self.stream.write(f"\r  {done:,}/{self.total:,} flows  {rate:,.0f} flows/s  {left:,.0f} s left  ")
        self.stream.flush()

    def end(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()
