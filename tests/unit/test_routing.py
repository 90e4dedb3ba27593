"""apiEndpoint matching as Express Gateway does it."""

from __future__ import annotations

import pytest

from mitmgateway.config.errors import KeyPath
from mitmgateway.routing import Router, hostname_of, parse_api_endpoint


def router(*endpoints: tuple[str, dict | list]) -> Router:
    return Router(
        (name, parse_api_endpoint(entry, KeyPath(name)), f"pipeline-{name}", KeyPath(name))
        for name, raw in endpoints
        for entry in (raw if isinstance(raw, list) else [raw])
    )


def matched(r: Router, host: str, path: str = "/", method: str = "GET") -> str | None:
    found = r.match(hostname_of(host), path, method)
    return found.api_endpoint_name if found else None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", "exact"),
        ("API.Example.COM:8080", "exact"),
        ("v1.example.com", "wildcard"),
        ("a.b.example.com", "deep"),
        ("x.y.b.example.com", "any"),  # a wildcard stands for one label
        ("example.com", "any"),
        ("api.example.com.", "any"),  # a trailing dot is another name
        ("127.0.0.1", "any"),
        ("[::1]:8080", "any"),
        ("", "any"),
    ],
)
def test_host_precedence(host, expected):
    r = router(
        ("any", {"host": "*"}),
        ("wildcard", {"host": "*.example.com"}),
        ("deep", {"host": "*.b.example.com"}),
        ("exact", {"host": "api.example.com"}),
    )
    assert matched(r, host) == expected


def test_exact_host_does_not_match_subdomains_or_other_names():
    r = router(("orders", {"host": "orders.local"}))
    assert matched(r, "orders.local") == "orders"
    assert matched(r, "orders.local.evil.com") is None
    assert matched(r, "evil.orders.local") is None
    assert matched(r, "xorders.local") is None


def test_host_regex():
    r = router(("regex", {"hostRegex": r"^(eu|us)\.api\.local$"}))
    assert matched(r, "eu.api.local") == "regex"
    assert matched(r, "EU.api.local:80") == "regex"
    assert matched(r, "asia.api.local") is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/users", "api"),
        ("/api/", "api"),
        ("/API/x?y=1", "api"),
        ("/users/42", "user"),
        ("/users/42/", "user"),
        ("/users/42/orders", None),
        ("/users/", None),
        ("/status", "status"),
        ("/status/", "status"),
        ("/statusx", None),
        ("/other", None),
    ],
)
def test_express_path_patterns(path, expected):
    r = router(
        ("api", {"paths": "/api/*"}),
        ("user", {"paths": ["/users/:id"]}),
        ("status", {"paths": ["/status"]}),
    )
    assert matched(r, "h", path) == expected


def test_path_regex_and_methods():
    r = router(
        ("writes", {"pathRegex": "^/v[0-9]+/", "methods": "POST, put"}),
        ("reads", {"methods": ["GET"]}),
    )
    assert matched(r, "h", "/v2/items", "POST") == "writes"
    assert matched(r, "h", "/v2/items", "PUT") == "writes"
    assert matched(r, "h", "/v2/items", "GET") == "reads"
    assert matched(r, "h", "/v2/items", "DELETE") is None


def test_list_of_endpoints_under_one_name():
    r = router(("mixed", [{"host": "a.local"}, {"host": "b.local", "paths": "/only"}]))
    assert matched(r, "a.local", "/x") == "mixed"
    assert matched(r, "b.local", "/only") == "mixed"
    assert matched(r, "b.local", "/x") is None


def test_config_order_breaks_ties():
    r = router(("first", {"host": "*", "paths": "/a/*"}), ("second", {"host": "*"}))
    assert matched(r, "h", "/a/b") == "first"
    assert matched(r, "h", "/b") == "second"


def test_strip_prefix_of_matched_pattern():
    r = router(("api", {"paths": ["/api/v1/*", "/users/:id"]}))
    assert r.match("h", "/api/v1/x", "GET").path_pattern.prefix == "/api/v1"
    assert r.match("h", "/users/3", "GET").path_pattern.prefix == "/users"
