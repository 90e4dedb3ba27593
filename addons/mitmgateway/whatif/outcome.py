"""What one request came to under one config (`Outcome`), and how two outcomes differ.

The comparison is the decision's parts a person acts on: the status the client got, the
apiEndpoint and pipeline that took the request, the policy that answered it (none: proxied), the
serviceEndpoint it went to, and, beyond the decision, what the client got (the response's
headers and body) and what the upstream got (the forwarded request). Values that differ from one
run to the next by design are left out of those two (a date, an age, what a rate-limit window has
left), so that only changes a config makes are reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from ..decision import Decision

# Their presence is compared, not their values: these change with the clock or with counter and
# cache state that a replay starts afresh.
_VALUE_VARIES = frozenset(
    {
        b"date",
        b"age",
        b"x-cache",
        b"retry-after",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"ratelimit",
    }
)
_VARIES = b"..."
# Not compared in the forwarded request: which url of a serviceEndpoint takes it (round-robin from
# wherever the live gateway had got to) is not a change of config.
_FORWARDED_UNCOMPARED = frozenset({b"host"})

Fingerprint = tuple[tuple[tuple[bytes, bytes], ...], str]
"""A message as compared: its header fields (names lower-cased, sorted) and its body's digest."""


def fingerprint(
    fields: Iterable[Sequence[bytes]], body: bytes | None, uncompared: frozenset[bytes] = frozenset()
) -> Fingerprint:
    """`fields` as mitmproxy holds them (raw (name, value) pairs), and the raw body."""
    headers = []
    for name, value in fields:
        lower = name.lower()
        if lower not in uncompared:
            headers.append((lower, _VARIES if lower in _VALUE_VARIES else value))
    headers.sort()
    return tuple(headers), "streamed" if body is None else hashlib.sha256(body).hexdigest()


def message_fingerprint(message: http.Message, uncompared: frozenset[bytes] = frozenset()) -> Fingerprint:
    return fingerprint(message.headers.fields, message.raw_content, uncompared)


@dataclass(frozen=True)
class Outcome:
    status: int | None
    """What the client got; None when the request was proxied and the upstream's answer is not
    in the recording."""
    api_endpoint: str | None = None
    pipeline: str | None = None
    policy: str | None = None
    """What answered (a policy, or a gate check such as ``no apiEndpoint``); None: proxied."""
    service_endpoint: str | None = None
    response: Fingerprint | None = field(default=None, repr=False)
    forwarded: tuple[str, str, Fingerprint] | None = field(default=None, repr=False)
    assumed: tuple[str, ...] = ()
    """What this outcome rests on that the replay could not check (an identity the recording
    kept instead of its credentials, counts from this recording alone)."""
    indeterminate: str | None = None
    """Why the outcome cannot be worked out offline (then nothing else is known)."""
    status_only: bool = False
    """Only the status is known: the recording's, from before another gateway (a migration)."""

    @classmethod
    def of_flow(cls, flow: http.HTTPFlow, assumed: tuple[str, ...] = ()) -> Outcome:
        """The outcome `flow` (decided by the gateway, replayed) came to."""
        return cls.of(Decision.recorded(flow) or Decision(), flow.request, flow.response, assumed)

    @classmethod
    def of(
        cls,
        decision: Decision,
        request: http.Request,
        response: http.Response | None,
        assumed: tuple[str, ...] = (),
    ) -> Outcome:
        """The outcome of a decision: `request` as it went upstream, `response` as the client
        got it."""
        forwarded = None
        if decision.answered_by is None:
            fields = message_fingerprint(request, _FORWARDED_UNCOMPARED)
            forwarded = (request.method, request.path, fields)
        return cls.of_parts(
            decision,
            forwarded,
            None if response is None else response.status_code,
            None if response is None else message_fingerprint(response),
            assumed,
        )

    @classmethod
    def of_states(
        cls, decision: Decision, request: dict[str, Any], response: dict[str, Any] | None
    ) -> Outcome:
        """`of` for a request and a response as mitmproxy saved them (their states)."""
        forwarded = None
        if decision.answered_by is None:
            fields = fingerprint(request["headers"], request["content"], _FORWARDED_UNCOMPARED)
            text = (
                request["method"].decode("utf-8", "surrogateescape").upper(),
                request["path"].decode("utf-8", "surrogateescape"),
            )
            forwarded = (*text, fields)
        if response is None:
            return cls.of_parts(decision, forwarded, None, None)
        return cls.of_parts(
            decision,
            forwarded,
            response["status_code"],
            fingerprint(response["headers"], response["content"]),
        )

    @classmethod
    def of_parts(
        cls,
        decision: Decision,
        forwarded: tuple[str, str, Fingerprint] | None,
        status: int | None,
        response: Fingerprint | None,
        assumed: tuple[str, ...] = (),
    ) -> Outcome:
        proxied = decision.answered_by is None
        return cls(
            status=status,
            api_endpoint=decision.api_endpoint,
            pipeline=decision.pipeline,
            policy=decision.answered_by,
            service_endpoint=decision.service_endpoint if proxied else None,
            response=response,
            forwarded=forwarded,
            assumed=assumed,
        )

    @classmethod
    def recorded_status(cls, status: int | None) -> Outcome:
        """A flow recorded by plain mitmproxy (in front of another gateway, say): its status."""
        return cls(status=status, status_only=True)

    @property
    def label(self) -> str:
        """``proxied 200``, ``401 by jwt``, ``indeterminate``: the outcome in a few words."""
        if self.indeterminate is not None:
            return "indeterminate"
        status = "?" if self.status is None else str(self.status)
        if self.status_only:
            return status
        return f"proxied {status}" if self.policy is None else f"{status} by {self.policy}"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "apiEndpoint": self.api_endpoint,
            "pipeline": self.pipeline,
            "policy": self.policy,
            "serviceEndpoint": self.service_endpoint,
        }
        if self.assumed:
            data["assumed"] = list(self.assumed)
        if self.status_only:
            data["recordedStatusOnly"] = True
        if self.indeterminate is not None:
            data["indeterminate"] = self.indeterminate
        return data


def changes(before: Outcome, after: Outcome) -> tuple[str, ...]:
    """What differs between two outcomes, by name (nothing: the same)."""
    if before.status_only:
        return ("status",) if before.status != after.status else ()
    named = (
        ("status", before.status, after.status),
        ("apiEndpoint", before.api_endpoint, after.api_endpoint),
        ("pipeline", before.pipeline, after.pipeline),
        ("policy", before.policy, after.policy),
        ("serviceEndpoint", before.service_endpoint, after.service_endpoint),
    )
    found = [name for name, a, b in named if a != b]
    if before.forwarded is not None and after.forwarded is not None and before.forwarded != after.forwarded:
        found.append("forwarded request")
    # An unknown status (the upstream's answer was not recorded) says nothing about the response.
    if before.response is not None and after.response is not None and before.response != after.response:
        found.append("response")
    return tuple(found)


def describe_change(before: Outcome, after: Outcome) -> str:
    """What changed in a response or a forwarded request, in a few words (for examples)."""
    parts = []
    if before.response and after.response and before.response != after.response:
        parts.append("response " + _header_diff(before.response, after.response))
    if before.forwarded and after.forwarded and before.forwarded != after.forwarded:
        a, b = before.forwarded, after.forwarded
        what = [f"path {a[1]} → {b[1]}"] if a[1] != b[1] else []
        if a[0] != b[0]:
            what.append(f"method {a[0]} → {b[0]}")
        parts.append("forwarded " + ", ".join(w for w in (*what, _header_diff(a[2], b[2])) if w))
    return "; ".join(parts)


def _header_diff(a: Fingerprint, b: Fingerprint) -> str:
    """``headers +x-new -x-gone ~content-type, body`` (what was added, removed, changed)."""
    before = {k.decode("latin-1"): v for k, v in a[0]}
    after = {k.decode("latin-1"): v for k, v in b[0]}
    words = [f"+{k}" for k in sorted(after.keys() - before.keys())]
    words += [f"-{k}" for k in sorted(before.keys() - after.keys())]
    words += [f"~{k}" for k in sorted(k for k in before.keys() & after.keys() if before[k] != after[k])]
    parts = ["headers " + " ".join(words)] if words else []
    if a[1] != b[1]:
        parts.append("body")
    return ", ".join(parts)
