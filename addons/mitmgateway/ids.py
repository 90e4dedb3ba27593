"""The ids the gateway makes up for a request: its request id and, when the client sent none, its
trace context.

Live, they are random. A replay (whatif/) judges a recorded request again and must make up the
ids it was given then, or every answer that carries one would differ: it sets its own `IdSource`
for the flow being judged (a context variable, so it never leaks into live traffic).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class IdSource:
    """Random ids, as the live gateway makes them."""

    def request_id(self) -> str:
        return secrets.token_hex(16)

    def traceparent(self) -> str:
        return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


_RANDOM = IdSource()
_SOURCE: ContextVar[IdSource | None] = ContextVar("mitmgateway_ids", default=None)


def new_request_id() -> str:
    return (_SOURCE.get() or _RANDOM).request_id()


def new_traceparent() -> str:
    return (_SOURCE.get() or _RANDOM).traceparent()


@contextmanager
def ids_from(source: IdSource) -> Iterator[None]:
    """Make up ids from `source` within this block."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)
