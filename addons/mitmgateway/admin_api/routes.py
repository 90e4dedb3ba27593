"""The admin API's plumbing: a request as its handlers see it, their reply, and the table that
maps Express Gateway's paths (``/users/:id/status``) to them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    """The JSON body, parsed (None without one)."""
    params: Mapping[str, str] = field(default_factory=dict)
    """The path's ``:name`` parts, decoded."""

    def field(self, name: str, kind: type | tuple[type, ...] = str, required: bool = True) -> Any:
        """A field of the JSON body, of `kind`; a 400 naming it otherwise."""
        body = self.body if isinstance(self.body, dict) else {}
        value = body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise AdminError(400, f"{name}: required" if value is None else f"{name}: wrong type")
        return value


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    """Sent as JSON; a str as text (Express Gateway answers its errors in text); None: no body."""


class AdminError(Exception):
    """A request the admin API refuses, with Express Gateway's status and text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[AdminRequest], Reply]


class RouteTable:
    """(method, pattern) → handler; ``:name`` in a pattern matches one path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern.rstrip("/") or "/")
        self._routes.append((method, re.compile(f"{regex}/?"), handler))

    def extend(self, routes: Mapping[tuple[str, str], Handler]) -> None:
        for (method, pattern), handler in routes.items():
            self.add(method, pattern, handler)

    def dispatch(self, request: AdminRequest) -> Reply:
        allowed = False
        for method, regex, handler in self._routes:
            match = regex.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed = True
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(
                    AdminRequest(request.method, request.path, request.query, request.body, params)
                )
            except AdminError as e:
                return Reply(e.status, e.message)
        return Reply(405, "Method Not Allowed") if allowed else Reply(404, "Not Found")
