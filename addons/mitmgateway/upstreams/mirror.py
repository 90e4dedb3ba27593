"""A proxy step's mirror (``mirror:`` in its action): a copy of each selected request goes to a
second serviceEndpoint once the primary upstream has answered, and the two answers are compared.

Parsed here once, at load: where the copies go, how many, and what counts as the same answer
(the status; the headers but the volatile ones and those ignored, or only those chosen; JSON
bodies minus the ignored paths, other bodies byte for byte, both decoded). Sending is the
`Mirrors` addon's (hooks/mirrors.py), never on the primary's path::

    - proxy:
        action:
          serviceEndpoint: orders
          mirror:
            serviceEndpoint: orders-v2
            percent: 10
            ignoreHeaders: [x-build]
            ignoreJsonPaths: [$.servedAt, items[*].etag]
"""

from __future__ import annotations

import json
import random
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import http

from ..bodies import NOT_PARSED, STREAM_BODIES_OVER, clipped, decoded, parse_json
from ..config.errors import ConfigError, KeyPath
from ..config.schema import (
    byte_size,
    check_type,
    header_name,
    option,
    parse_fields,
    positive,
    require_list,
    unknown,
)
from .endpoints import ServiceEndpoint, Upstream
from .tls import system_ca_bundle

VOLATILE_HEADERS = frozenset(
    {
        "age",
        "connection",
        "content-encoding",
        "content-length",
        "date",
        "etag",
        "expires",
        "keep-alive",
        "last-modified",
        "server",
        "set-cookie",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "via",
        "x-request-id",
    }
)
"""Headers two instances of one service answer differently by nature: never compared unless
``compareHeaders`` names them (bodies are compared decoded, so neither is Content-Encoding)."""

_ANY = object()
"""A path segment matching every item of a list or every member of an object (``[*]``, ``.*``)."""
_SEGMENT = re.compile(
    r"(?P<dot>\.?)(?P<name>[A-Za-z0-9_$@-]+|\*)|\[(?P<index>\d+|\*)\]|\[(?P<quoted>'[^']*'|\"[^\"]*\")\]"
)
JsonPath = tuple[Any, ...]
"""Object keys (str), list indexes (int) and `_ANY`, from the document's root."""


def _percent(value: Any, path: KeyPath) -> float:
    number = check_type(float, value, path)
    if not 0 <= number <= 100:
        raise ConfigError(path, f"must be a percentage (0-100), got {value!r}")
    return number


def parse_json_path(value: Any, path: KeyPath) -> JsonPath:
    """``$.a.b``, ``a.b``, ``items[0].id``, ``items[*].id``, ``$['odd key']``."""
    text = check_type(str, value, path)
    rest = text[1:] if text.startswith("$") else text
    segments: list[Any] = []
    position = 0
    while position < len(rest):
        found = _SEGMENT.match(rest, position)
        # A name follows a dot, except the first of a path without "$".
        if found is None or (found["name"] and not found["dot"] and (segments or rest is not text)):
            raise ConfigError(
                path, f"{text!r} is not a JSON path such as $.items[*].id (at {rest[position:]!r})"
            )
        name, index, quoted = found["name"], found["index"], found["quoted"]
        if quoted is not None:
            segments.append(quoted[1:-1])
        elif name is not None:
            segments.append(_ANY if name == "*" else name)
        else:
            segments.append(_ANY if index == "*" else int(index))
        position = found.end()
    if not segments:
        raise ConfigError(path, f"{text!r} names the whole document: ignore the body with a path inside it")
    return tuple(segments)


def _json_paths(value: Any, path: KeyPath) -> tuple[JsonPath, ...]:
    items = [value] if isinstance(value, str) else require_list(value, path)
    return tuple(parse_json_path(v, path.index(i)) for i, v in enumerate(items))


def _header_names(value: Any, path: KeyPath) -> frozenset[str]:
    items = [value] if isinstance(value, str) else require_list(value, path)
    return frozenset(header_name(v, path.index(i)).lower() for i, v in enumerate(items))


def _optional_header_names(value: Any, path: KeyPath) -> frozenset[str] | None:
    return None if value is None else _header_names(value, path)


@dataclass(frozen=True)
class MirrorAction:
    service_endpoint: str = option("serviceEndpoint")
    percent: float = option("percent", 100.0, parse=_percent)
    """Of the requests the step proxies, the share copied to the mirror."""
    max_body_bytes: int = option("maxBodyBytes", STREAM_BODIES_OVER, parse=byte_size)
    """A request or primary answer with a larger body is not mirrored (counted as skipped)."""
    ignore_headers: frozenset[str] = option("ignoreHeaders", frozenset(), parse=_header_names)
    compare_headers: frozenset[str] | None = option("compareHeaders", None, parse=_optional_header_names)
    """Compare only these response headers (default: all but the volatile and the ignored)."""
    ignore_json_paths: tuple[JsonPath, ...] = option("ignoreJsonPaths", (), parse=_json_paths)
    timeout: int = option("timeout", 10_000, parse=positive)
    """Milliseconds the mirror has for the whole exchange, from the moment the copy leaves."""
    max_in_flight: int = option("maxInFlight", 16, parse=positive)
    """Copies on their way at once; one more is skipped (``busy``), so a slow mirror costs a
    bounded amount of memory and threads."""


def parse_mirror(value: Any, path: KeyPath) -> MirrorAction:
    return parse_fields(MirrorAction, value, path)


@dataclass(frozen=True, eq=False)
class MirrorSpec:
    """A mirror as the proxy step and the `Mirrors` addon use it: the action, the service's urls
    (taken in turn) and, for https ones, how their certificates are checked. (Each step's is its
    own, counted apart: equal only to itself.)"""

    action: MirrorAction
    service: ServiceEndpoint
    tls: ssl.SSLContext | None
    uncompared_headers: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uncompared_headers", VOLATILE_HEADERS | self.action.ignore_headers)

    @property
    def name(self) -> str:
        return self.service.name

    def sampled(self) -> bool:
        """Whether this request is one of the ``percent`` copied."""
        percent = self.action.percent
        return percent >= 100 or random.random() * 100 < percent

    def differs(self, primary: http.Response, mirror: http.Response) -> str | None:
        """What differs between the two answers, in a few words; None when they match."""
        if primary.status_code != mirror.status_code:
            return f"status {primary.status_code} ≠ {mirror.status_code}"
        if (header := self._header_difference(primary.headers, mirror.headers)) is not None:
            return header
        return self._body_difference(primary, mirror)

    def _header_difference(self, primary: http.Headers, mirror: http.Headers) -> str | None:
        chosen = self.action.compare_headers
        if chosen is None:
            names = {n.lower() for n in (*primary.keys(), *mirror.keys())} - self.uncompared_headers
        else:
            names = set(chosen - self.action.ignore_headers)
        for name in sorted(names):
            # A repeated field is the same as its values joined (RFC 9110, 5.3).
            ours, theirs = ", ".join(primary.get_all(name)), ", ".join(mirror.get_all(name))
            if ours != theirs:
                return f"header {name}: {clipped(ours or '(none)')} ≠ {clipped(theirs or '(none)')}"
        return None

    def _body_difference(self, primary: http.Response, mirror: http.Response) -> str | None:
        limit = self.action.max_body_bytes
        ours, theirs = decoded(primary, limit), decoded(mirror, limit)
        if ours is None or theirs is None:  # compared as they came
            ours, theirs = primary.raw_content or b"", mirror.raw_content or b""
        if ours == theirs:
            return None
        documents = parse_json(ours), parse_json(theirs)
        if documents[0] is not NOT_PARSED and documents[1] is not NOT_PARSED:
            ours_trimmed, theirs_trimmed = (_without(d, self.action.ignore_json_paths) for d in documents)
            return _json_difference(ours_trimmed, theirs_trimmed, "$")
        return f"body differs ({len(ours)} ≠ {len(theirs)} bytes)"


_IGNORED = object()


def _json_difference(ours: Any, theirs: Any, where: str) -> str | None:
    """The first place two documents differ, as ``$.items[2].id: 1 ≠ 2``; None if nowhere."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(ours.keys() | theirs.keys()):
            inner = f"{where}.{key}"
            if key not in ours or key not in theirs:
                return f"{inner}: only in the {'primary' if key in ours else 'mirror'}'s answer"
            if (found := _json_difference(ours[key], theirs[key], inner)) is not None:
                return found
        return None
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if (found := _json_difference(a, b, f"{where}[{index}]")) is not None:
                return found
        return None
    if ours == theirs and type(ours) is type(theirs):
        return None
    return f"{where}: {_brief(ours)} ≠ {_brief(theirs)}"


def _brief(value: Any) -> str:
    return clipped("(ignored)" if value is _IGNORED else json.dumps(value, default=lambda _: "(ignored)"))


def _without(document: Any, paths: tuple[JsonPath, ...]) -> Any:
    for path in paths:
        _drop(document, path)
    return document


def _drop(node: Any, path: JsonPath) -> None:
    """Remove what `path` names under `node` (a parsed document, changed in place)."""
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        keys = list(node) if head is _ANY else [head] if head in node else []
    elif isinstance(node, list):
        keys = (
            list(range(len(node)))
            if head is _ANY
            else [head]
            if isinstance(head, int) and head < len(node)
            else []
        )
    else:
        return
    for key in keys:
        if rest:
            _drop(node[key], rest)
        elif isinstance(node, list):
            node[key] = _IGNORED  # the other items keep their places
        else:
            del node[key]


@dataclass(frozen=True)
class MirrorTarget:
    """Where one request's copy goes: the url taken, the path and Host the copy carries (the
    proxy step's stripPath, prependPath and changeOrigin applied to the mirror's url)."""

    spec: MirrorSpec
    upstream: Upstream
    path: str
    host: str | None


def build_mirror(
    action: MirrorAction, services: Mapping[str, ServiceEndpoint], config_dir: Path, path: KeyPath
) -> MirrorSpec:
    service = services.get(action.service_endpoint)
    if service is None:
        raise ConfigError(
            path.key("serviceEndpoint"),
            unknown("serviceEndpoint", action.service_endpoint, services, "declared"),
        )
    if not any(u.scheme == "https" for u in service.upstreams):
        return MirrorSpec(action, service, None)
    # As for the primary (tls.py): the service's caFile instead of the system's CAs.
    ca_file = str(config_dir / service.ca_file) if service.ca_file else system_ca_bundle()
    try:
        return MirrorSpec(action, service, ssl.create_default_context(cafile=ca_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(path.key("serviceEndpoint"), f"cannot read the CAs in {ca_file}: {e}") from e
