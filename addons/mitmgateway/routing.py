"""apiEndpoint matching, compiled once per config into lookups the request path only reads.

Semantics follow Express Gateway: ``host`` is compared case-insensitively and without the port,
``*.example.com`` matches one more label, ``*`` matches any host; ``paths`` are Express patterns
(``/api/*``, ``/users/:id``, exact), case-insensitive, with an optional trailing slash; ``methods``
restricts the HTTP methods. Exact hosts are looked up in a dict and tried first, then wildcards
from the most specific, then host regexes, then ``*``: a request goes to the first endpoint whose
host, path and method all match (so a listed host whose paths do not match falls through to a
wildcard endpoint, as in Express Gateway).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config.errors import ConfigError, KeyPath
from .config.schema import check_type, http_methods, option, parse_fields
from .paths import PathRules, Refusal, canonical_path


def compile_regex(pattern: str, path: KeyPath, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as e:
        raise ConfigError(path, f"invalid regular expression {pattern!r}: {e}") from e


def _regex(value: Any, path: KeyPath) -> re.Pattern[str]:
    return compile_regex(check_type(str, value, path), path)


@dataclass(frozen=True)
class PathPattern:
    """An Express path pattern, compiled; `prefix` is what ``stripPath`` removes."""

    pattern: str
    regex: re.Pattern[str]
    prefix: str

    @classmethod
    def compile(cls, pattern: str, path: KeyPath) -> PathPattern:
        if not pattern.startswith("/"):
            raise ConfigError(path, f"path pattern {pattern!r} must start with '/'")
        _check_canonical(pattern, path)
        regex = re.sub(
            r":([A-Za-z_][A-Za-z0-9_]*)|\*|[^:*]+",
            lambda m: "[^/]+?" if m.group(1) else "(?:.*)" if m.group(0) == "*" else re.escape(m.group(0)),
            pattern.rstrip("/") or "/",
        )
        if regex != "/":
            regex += "/?"
        prefix = re.split(r"[*:]", pattern, maxsplit=1)[0].rstrip("/")
        return cls(pattern, compile_regex(f"{regex}\\Z", path, re.IGNORECASE), prefix)


# Requests are matched in canonical form (paths.py); a pattern is checked against the most
# permissive rules, since which ones a config chooses is not known while its endpoints are parsed.
_PATTERN_RULES = PathRules(
    merge_slashes=False, escaped_slashes="keep", dot_segments="resolve", semicolons="keep"
)


def _check_canonical(pattern: str, path: KeyPath) -> None:
    parameters: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        parameters.append(match.group(0))
        return f"_p{len(parameters) - 1}_"

    literal = re.sub(r":[A-Za-z_][A-Za-z0-9_]*|\*", placeholder, pattern)
    try:
        canonical = canonical_path(literal.encode("utf-8", "surrogateescape"), _PATTERN_RULES).decode()
    except Refusal as e:
        raise ConfigError(path, f"path pattern {pattern!r} could never match: {e.reason}") from None
    if canonical.lower() != literal.lower():
        suggested = re.sub(r"_p(\d+)_", lambda m: parameters[int(m.group(1))], canonical)
        raise ConfigError(
            path,
            f"path pattern {pattern!r} could never match: requests are matched in canonical form, "
            f"write {suggested!r}",
        )


def _path_patterns(value: Any, path: KeyPath) -> tuple[PathPattern, ...]:
    patterns = check_type(tuple[str, ...], value, path)
    return tuple(PathPattern.compile(p, path.index(i)) for i, p in enumerate(patterns))


def _host(value: Any, path: KeyPath) -> str:
    host = check_type(str, value, path).strip().lower()
    if not host:
        raise ConfigError(path, "must not be empty (use '*' for any host)")
    return host


@dataclass(frozen=True)
class ApiEndpoint:
    """One entry of ``apiEndpoints.NAME`` (an endpoint may list several)."""

    host: str = option("host", "*", parse=_host)
    host_regex: re.Pattern[str] | None = option("hostRegex", None, parse=_regex)
    paths: tuple[PathPattern, ...] | None = option("paths", None, parse=_path_patterns)
    path_regex: re.Pattern[str] | None = option("pathRegex", None, parse=_regex)
    methods: frozenset[str] | None = option("methods", None, parse=http_methods)
    scopes: tuple[str, ...] = option("scopes", ())

    def match_path(self, path: str) -> PathPattern | bool:
        """The pattern that matched (for stripPath), True when any path goes, False for none."""
        if self.paths is not None:
            for pattern in self.paths:
                if pattern.regex.match(path):
                    return pattern
            return False
        if self.path_regex is not None:
            return self.path_regex.search(path) is not None
        return True


def parse_api_endpoint(raw: Any, path: KeyPath) -> ApiEndpoint:
    endpoint = parse_fields(ApiEndpoint, raw, path)
    if "host" in raw and "hostRegex" in raw:
        raise ConfigError(path, "give either host or hostRegex, not both")
    if "paths" in raw and "pathRegex" in raw:
        raise ConfigError(path, "give either paths or pathRegex, not both")
    return endpoint


def hostname_of(host_header: str) -> str:
    """The Host header's name, lower-cased, without the port (``[::1]:8080`` → ``[::1]``)."""
    if host_header.rfind(":") > host_header.rfind("]"):
        host_header = host_header.rpartition(":")[0]
    return host_header.lower()


@dataclass(frozen=True)
class RouteMatch:
    """What the router decided for one request."""

    api_endpoint_name: str
    api_endpoint: ApiEndpoint
    pipeline: Any  # pipeline.Pipeline; typed loosely to keep routing free of policies
    path_pattern: PathPattern | None


def _wildcard_host_regex(host: str, path: KeyPath) -> re.Pattern[str]:
    # ``*`` stands for exactly one DNS label, as Express Gateway's vhost matching does.
    labels = ("[^.]+" if label == "*" else re.escape(label) for label in host.split("."))
    return compile_regex("^" + r"\.".join(labels) + r"\Z", path)


@dataclass(frozen=True)
class _Rule:
    name: str
    endpoint: ApiEndpoint
    pipeline: Any
    host_pattern: re.Pattern[str] | None

    def match(self, host: str, path: str, method: str) -> RouteMatch | None:
        if self.host_pattern is not None and not self.host_pattern.search(host):
            return None
        if self.endpoint.methods is not None and method not in self.endpoint.methods:
            return None
        matched = self.endpoint.match_path(path)
        if matched is False:
            return None
        pattern = matched if isinstance(matched, PathPattern) else None
        return RouteMatch(self.name, self.endpoint, self.pipeline, pattern)


class Router:
    """Maps (host, path, method) to the apiEndpoint and pipeline that serve it."""

    def __init__(self, routes: Iterable[tuple[str, ApiEndpoint, Any, KeyPath]]) -> None:
        """`routes`: (apiEndpoint name, endpoint, pipeline, key path) in config order."""
        routes = tuple(routes)
        self.endpoints: tuple[tuple[str, ApiEndpoint, Any], ...] = tuple(r[:3] for r in routes)
        """(apiEndpoint name, endpoint, pipeline) in config order, for tools that describe a config."""
        self._exact: dict[str, list[_Rule]] = {}
        wildcard: list[tuple[int, _Rule]] = []
        for name, endpoint, pipeline, path in routes:
            if endpoint.host_regex is not None:
                wildcard.append((1, _Rule(name, endpoint, pipeline, endpoint.host_regex)))
            elif endpoint.host == "*":
                wildcard.append((2, _Rule(name, endpoint, pipeline, None)))
            elif "*" in endpoint.host:
                # More labels first: *.api.example.com before *.example.com.
                host_regex = _wildcard_host_regex(endpoint.host, path.key("host"))
                wildcard.append((-endpoint.host.count("."), _Rule(name, endpoint, pipeline, host_regex)))
            else:
                rule = _Rule(name, endpoint, pipeline, None)
                self._exact.setdefault(endpoint.host, []).append(rule)
        self._wildcard: Sequence[_Rule] = [rule for _, rule in sorted(wildcard, key=lambda r: r[0])]

    def match(self, hostname: str, path: str, method: str) -> RouteMatch | None:
        """`hostname` as `hostname_of` gives it; `path` may carry a query string."""
        path = path.partition("?")[0] or "/"
        for rule in self._exact.get(hostname, ()):
            if found := rule.match(hostname, path, method):
                return found
        for rule in self._wildcard:
            if found := rule.match(hostname, path, method):
                return found
        return None
