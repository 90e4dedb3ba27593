"""EG's ``${...}`` templates (``rateLimitBy: "${req.headers.apikey}"``), compiled at config load.

No eval: each reference is resolved to a small getter over the request context; a template is a
tuple of literal strings and getters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config.errors import ConfigError, KeyPath
from .config.schema import check_type
from .expressions import REQUEST_MEMBERS

if TYPE_CHECKING:
    from .context import RequestContext

Getter = Callable[["RequestContext"], Any]
REFERENCE = re.compile(r"\$\{([^}]*)\}")


def _claim(name: str) -> Getter:
    return lambda ctx: ctx.user.get(name) if ctx.user is not None else None


def _header(name: str) -> Getter:
    return lambda ctx: ctx.flow.request.headers.get(name)


def _client_member(dotted: str) -> Getter:
    """``req.client.subject.CN``: a member of Node's req.client (the TLS client certificate)."""
    keys = tuple(dotted.split("."))
    client = REQUEST_MEMBERS["client"]

    def get(ctx: RequestContext) -> Any:
        value: Any = client(ctx)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return get


# The request's own text members, read as expressions read them (headers and query are not text).
SIMPLE_REFERENCES: dict[str, Getter] = {
    f"req.{name}": getter for name, getter in REQUEST_MEMBERS.items() if name not in ("headers", "query")
}
PREFIXED_REFERENCES: dict[str, Callable[[str], Getter]] = {
    "req.headers.": _header,
    "req.client.": _client_member,
    "req.user.": _claim,
    "user.": _claim,
}


def _getter(reference: str, path: KeyPath) -> Getter:
    reference = reference.strip()
    if reference in SIMPLE_REFERENCES:
        return SIMPLE_REFERENCES[reference]
    for prefix, make in PREFIXED_REFERENCES.items():
        if reference.startswith(prefix) and len(reference) > len(prefix):
            return make(reference[len(prefix) :])
    known = [*SIMPLE_REFERENCES, *(f"{p}NAME" for p in PREFIXED_REFERENCES)]
    raise ConfigError(path, f"unknown template reference ${{{reference}}} (known: {', '.join(known)})")


@dataclass(frozen=True)
class Template:
    parts: tuple[str | Getter, ...]
    source: str = ""

    def render(self, ctx: RequestContext, missing: str | None = None) -> str | None:
        """The text; a reference without a value makes it None, or `missing` if that is given."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(ctx)
            if value is None:
                if missing is None:
                    return None
                value = missing
            out.append(str(value))
        return "".join(out)


def parse_template(value: Any, path: KeyPath) -> Template:
    text = check_type(str, value, path)
    parts: list[str | Getter] = []
    position = 0
    for match in REFERENCE.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(_getter(match.group(1), path))
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    return Template(tuple(parts), text)
