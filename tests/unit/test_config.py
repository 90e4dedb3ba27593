"""Loading gateway.config.yml: every error names the file, the key path and what is wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import every_policy_pipeline, one_pipeline
from harness import unplaced
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import POLICIES, StepState

KNOWN_POLICIES = ", ".join(sorted(POLICIES))

VALID = """\
http: {port: 8080}
apiEndpoints:
  api: {host: api.local, paths: ['/v1/*']}
serviceEndpoints:
  backend: {url: 'http://127.0.0.1:9001'}
policies: [proxy, rate-limit]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - rate-limit: [{action: {max: 10}}]
      - proxy: [{action: {serviceEndpoint: backend}}]
"""


def load(tmp_path: Path, text: str, name: str = "gateway.config.yml", env: dict[str, str] | None = None):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, StepState(), env or {})


def placed_error(tmp_path: Path, text: str, **kwargs) -> str:
    """The error, with its file:line:column."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return str(info.value)


def error(tmp_path: Path, text: str, **kwargs) -> str:
    """The error without its line and column (the tests of places are placed_error's)."""
    return unplaced(placed_error(tmp_path, text, **kwargs))


def test_valid_config_builds_router_and_pipelines(tmp_path):
    config = load(tmp_path, VALID)
    assert config.http.port == 8080
    assert list(config.pipelines) == ["main"]
    assert [s.policy_name for s in config.pipelines["main"].steps] == ["rate-limit", "proxy"]
    assert config.router.match("api.local", "/v1/x", "GET").pipeline.name == "main"


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (
            ("max: 10", 'max: "ten"'),
            "pipelines.main.policies[0].rate-limit[0].action.max",
            "must be an integer, got string 'ten'",
        ),
        (
            ("max: 10", "max: -1"),
            "pipelines.main.policies[0].rate-limit[0].action.max",
            "must be 0 or more, got -1",
        ),
        (
            ("max: 10", "max: 10, burst: 3"),
            "pipelines.main.policies[0].rate-limit[0].action.burst",
            "unknown key (accepted: max, windowMs, algorithm, rateLimitBy, message, statusCode, headers, "
            "delayAfter, delayMs)",
        ),
        (
            ("serviceEndpoint: backend", "serviceEndpoint: billing"),
            "pipelines.main.policies[1].proxy[0].action.serviceEndpoint",
            "unknown serviceEndpoint 'billing' (declared: backend)",
        ),
        (
            ("policies: [proxy, rate-limit]", "policies: [proxy]"),
            "pipelines.main.policies[0].rate-limit",
            "policy 'rate-limit' is used but not declared in policies",
        ),
        (
            ("- rate-limit:", "- rate-limiter:"),
            "pipelines.main.policies[0].rate-limiter",
            f"unknown policy 'rate-limiter', did you mean 'rate-limit'? (known: {KNOWN_POLICIES})",
        ),
        (
            ("apiEndpoints: [api]", "apiEndpoints: [web]"),
            "pipelines.main.apiEndpoints[0]",
            "unknown apiEndpoint 'web' (declared: api)",
        ),
        (("port: 8080", "port: 80800"), "http.port", "must be a TCP port (1-65535), got 80800"),
        (
            ("http:", "htp:"),
            "htp",
            "unknown key, did you mean 'http'? (accepted: http, https, admin, apiEndpoints, "
            "serviceEndpoints, policies, pipelines, trustedProxies, accessLog, rateLimitStore, "
            "consumers, errors, plugins, limits, paths, tracing, apiEndpoint, serviceEndpoint, policy, "
            "pipeline)",
        ),
        (
            ("paths: ['/v1/*']", "paths: ['v1/*']"),
            "apiEndpoints.api.paths[0]",
            "path pattern 'v1/*' must start with '/'",
        ),
        (
            ("paths: ['/v1/*']", "paths: ['/%76%31/:id']"),
            "apiEndpoints.api.paths[0]",
            "path pattern '/%76%31/:id' could never match: requests are matched in canonical form, "
            "write '/v1/:id'",
        ),
        (
            ("paths: ['/v1/*']", "paths: ['/v1/a%2/*']"),
            "apiEndpoints.api.paths[0]",
            "path pattern '/v1/a%2/*' could never match: malformed percent-escape in path",
        ),
        (
            ("http: {port: 8080}\n", "http: {port: 8080}\npaths: {dotSegments: allow}\n"),
            "paths.dotSegments",
            "must be one of 'reject', 'resolve', got string 'allow'",
        ),
        (
            ("host: api.local,", "hostRegex: '(', host: api.local,"),
            "apiEndpoints.api.hostRegex",
            "invalid regular expression '(': missing ), unterminated subpattern at position 0",
        ),
        (
            ("url: 'http://127.0.0.1:9001'", "url: 'ftp://127.0.0.1'"),
            "serviceEndpoints.backend.url",
            "must be an http:// or https:// URL with a host, got 'ftp://127.0.0.1'",
        ),
        (
            (
                "- proxy: [{action: {serviceEndpoint: backend}}]",
                "- proxy: [{action: {serviceEndpoint: backend}, when: 1}]",
            ),
            "pipelines.main.policies[1].proxy[0].when",
            "unknown key (accepted: condition, action, mode)",
        ),
        (
            ("- proxy: [{action: {serviceEndpoint: backend}}]", "- proxy: [{action: {}}]"),
            "pipelines.main.policies[1].proxy[0].action.serviceEndpoint",
            "is required",
        ),
        (
            ("- proxy: [{action:", "- proxy: [{condition: {name: sometimes}, action:"),
            "pipelines.main.policies[1].proxy[0].condition.name",
            "unknown condition 'sometimes' (known: always, never, allOf, oneOf, not, pathExact, pathMatch, "
            "method, hostMatch, authenticated, anonymous, tlsClientAuthenticated, expression, json-schema)",
        ),
        (
            ("- proxy: [{action:", "- proxy: [{condition: {name: not, condition: {name: method}}, action:"),
            "pipelines.main.policies[1].proxy[0].condition.condition.methods",
            "is required",
        ),
        (
            ("- proxy: [{action:", "- proxy: [{condition: {name: expression, expression: 'x'}, action:"),
            "pipelines.main.policies[1].proxy[0].condition.expression",
            "unknown name 'x' in 'x' (known: req, user, consumer, requestID, apiEndpoint)",
        ),
        (
            ("max: 10", "max: 10, algorithm: leaky-bucket"),
            "pipelines.main.policies[0].rate-limit[0].action.algorithm",
            "must be one of 'fixed-window', 'sliding-window', got string 'leaky-bucket'",
        ),
    ],
)
def test_errors_name_file_key_path_and_reason(tmp_path, change, path, reason):
    old, new = change
    assert old in VALID
    message = error(tmp_path, VALID.replace(old, new, 1))
    assert message == f"{tmp_path / 'gateway.config.yml'}: {path}: {reason}"


def test_independent_errors_are_reported_together(tmp_path):
    file = tmp_path / "gateway.config.yml"
    text = VALID.replace("port: 8080", "port: 0").replace("http://127.0.0.1:9001", "ftp://x")
    text = text.replace("host: api.local,", "host: api.local, verbs: [GET],")
    assert error(tmp_path, text).splitlines() == [
        f"{file}: http.port: must be a TCP port (1-65535), got 0",
        f"{file}: apiEndpoints.api.verbs: unknown key "
        "(accepted: host, hostRegex, paths, pathRegex, methods, scopes)",
        f"{file}: serviceEndpoints.backend.url: must be an http:// or https:// URL with a host, got 'ftp://x'",
    ]


def test_pipelines_are_checked_once_what_they_refer_to_is_valid(tmp_path):
    # An invalid serviceEndpoint is reported once, not again by every proxy step naming it.
    text = VALID.replace("http://127.0.0.1:9001", "ftp://x").replace("max: 10", "max: -1")
    assert error(tmp_path, text).endswith("got 'ftp://x'")
    two_steps = VALID.replace("max: 10", "max: -1").replace(
        "serviceEndpoint: backend", "serviceEndpoint: nope"
    )
    assert [line.split(": ", 2)[1] for line in error(tmp_path, two_steps).splitlines()] == [
        "pipelines.main.policies[0].rate-limit[0].action.max",
        "pipelines.main.policies[1].proxy[0].action.serviceEndpoint",
    ]


def test_apiendpoint_served_by_two_pipelines_is_refused(tmp_path):
    text = VALID + "  second:\n    apiEndpoints: [api]\n    policies: []\n"
    assert error(tmp_path, text).endswith(
        "pipelines.second.apiEndpoints[0]: apiEndpoint 'api' is already served by pipeline 'main'"
    )


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = placed_error(
        tmp_path, VALID.replace("policies: [proxy, rate-limit]", "policies: [proxy, rate-limit")
    )
    assert (
        message
        == f"{tmp_path / 'gateway.config.yml'}:6:11: invalid YAML: a '[' without its ']' (or a missing ',')"
    )


def test_duplicate_keys_are_refused(tmp_path):
    message = error(tmp_path, VALID + "http: {port: 9090}\n")
    assert "duplicate key 'http'" in message


def test_json_config(tmp_path):
    document = {
        "http": {"port": 8081},
        "apiEndpoints": {"api": {"host": "*"}},
        "serviceEndpoints": {"backend": {"urls": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}},
        "policies": ["proxy"],
        "pipelines": {
            "main": {
                "apiEndpoints": ["api"],
                "policies": [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}],
            }
        },
    }
    config = load(tmp_path, json.dumps(document), name="gateway.config.json")
    assert config.http.port == 8081
    assert len(config.service_endpoints["backend"].upstreams) == 2
    broken = json.dumps(document)[:-1]
    message = placed_error(tmp_path, broken, name="gateway.config.json")
    assert (
        message
        == f"{tmp_path / 'gateway.config.json'}:1:{len(broken) + 1}: invalid JSON: Expecting ',' delimiter"
    )


def test_environment_substitution(tmp_path):
    text = VALID.replace("port: 8080", "port: '${PORT:-8080}'").replace(
        "http://127.0.0.1:9001", "http://${BACKEND_HOST}:9001"
    )
    config = load(tmp_path, text, env={"BACKEND_HOST": "127.0.0.2"})
    assert config.http.port == 8080
    assert config.service_endpoints["backend"].upstreams[0].host == "127.0.0.2"
    assert load(tmp_path, text, env={"PORT": "9000", "BACKEND_HOST": "h"}).http.port == 9000
    assert error(tmp_path, text).endswith(
        "serviceEndpoints.backend.url: environment variable BACKEND_HOST is not set and has no default"
    )


def test_templates_are_not_environment_references(tmp_path):
    text = VALID.replace("max: 10", "max: 10, rateLimitBy: '${req.headers.x-api-key}'")
    config = load(tmp_path, text)
    assert config.pipelines["main"].steps[0].policy.action.rate_limit_by is not None


def test_singular_aliases(tmp_path):
    text = VALID.replace("apiEndpoints:\n", "apiEndpoint:\n").replace("pipelines:", "pipeline:")
    assert list(load(tmp_path, text).pipelines) == ["main"]


def test_policy_without_steps_runs_once_with_empty_action(tmp_path):
    text = VALID.replace("- rate-limit: [{action: {max: 10}}]", "- rate-limit:")
    step = load(tmp_path, text).pipelines["main"].steps[0]
    assert step.policy.action.max == 5
    assert step.policy.action.window_ms == 60_000


def test_https_without_certificates_is_refused(tmp_path):
    # The https section itself is tested in tests/e2e/test_tls.py.
    assert "https.tls: must name at least one certificate" in error(tmp_path, VALID + "https: {port: 8443}\n")


def test_unchanged_steps_keep_their_counters_across_reloads(tmp_path):
    state = StepState()
    path = tmp_path / "gateway.config.yml"
    path.write_text(VALID)

    def step(config):
        return config.pipelines["main"].steps[0].policy

    first = step(load_config(path, state, {}))
    second = step(load_config(path, state, {}))
    assert second.store is first.store and second.prefix == first.prefix
    path.write_text(VALID.replace("max: 10", "max: 11"))
    assert step(load_config(path, state, {})).prefix == first.prefix  # a new max, the same window
    path.write_text(VALID.replace("max: 10", "max: 10, windowMs: 1000"))
    assert step(load_config(path, state, {})).prefix != first.prefix


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            ("- rate-limit:", "- rate-limimt:"),
            "11:9: pipelines.main.policies[0].rate-limimt: unknown policy 'rate-limimt', "
            f"did you mean 'rate-limit'? (known: {KNOWN_POLICIES})",
        ),
        (
            ("max: 10", "max: -1"),
            "11:32: pipelines.main.policies[0].rate-limit[0].action.max: must be 0 or more, got -1",
        ),
        (
            ("  api: {host", "  api: {hots"),
            "3:9: apiEndpoints.api.hots: unknown key, did you mean 'host'? "
            "(accepted: host, hostRegex, paths, pathRegex, methods, scopes)",
        ),
        (
            ("serviceEndpoint: backend", "serviceEndpoint: backnd"),
            "12:27: pipelines.main.policies[1].proxy[0].action.serviceEndpoint: unknown serviceEndpoint "
            "'backnd', did you mean 'backend'? (declared: backend)",
        ),
        (
            ("    apiEndpoints: [api]", "\tapiEndpoints: [api]"),
            "9:1: invalid YAML: a tab: YAML indents with spaces",
        ),
        (
            ("http: {port: 8080}", "http: port: 8080"),
            "1:11: invalid YAML: a ':' where a value was expected (quote values with ': ')",
        ),
        (
            ("http: {port: 8080}", "http: {port: *port}"),
            "1:14: invalid YAML: an alias (*name) with no anchor (&name) before it",
        ),
    ],
)
def test_broken_configs_are_reported_word_for_word(tmp_path, change, expected):
    old, new = change
    assert old in VALID
    assert (
        placed_error(tmp_path, VALID.replace(old, new, 1)) == f"{tmp_path / 'gateway.config.yml'}:{expected}"
    )


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "---\n"])
def test_an_empty_file_is_called_empty(tmp_path, text):
    assert placed_error(tmp_path, text) == (
        f"{tmp_path / 'gateway.config.yml'}: the file is empty: a gateway config needs http (or https), "
        "apiEndpoints, serviceEndpoints and pipelines"
    )


def test_configs_that_would_leak_are_refused(tmp_path):
    from mitmgateway.config.assemble import load_config
    from mitmgateway.config.errors import ConfigError
    from mitmgateway.policies import StepState

    file = tmp_path / "gateway.config.yml"
    for steps, reason in [
        (
            "- cors: [{action: {origin: true, credentials: true}}]",
            "credentials need a list of trusted origins",
        ),
        (
            "- cache: [{action: {}}]\n- key-auth: [{action: {}}]",
            "a cache step comes before an authentication step",
        ),
    ]:
        file.write_text(
            every_policy_pipeline(
                "http://127.0.0.1:9", steps + "\n- proxy: [{action: {serviceEndpoint: backend}}]"
            ).replace("{port}", "8080")
        )
        try:
            load_config(file, StepState(), {})
        except ConfigError as e:
            assert reason in str(e)
        else:
            raise AssertionError(f"accepted: {steps}")


@pytest.mark.parametrize("section", ["trustedProxies", "policies"])
def test_a_null_list_section_is_refused_as_a_missing_one_is_not(tmp_path, section):
    file = tmp_path / "gateway.config.yml"
    text = one_pipeline("http://127.0.0.1:9", "- proxy: [{action: {serviceEndpoint: backend}}]")
    text = re.sub(r"^policies: .*$", "", text, flags=re.M).replace("{port}", "8080")
    file.write_text(text + f"{section}: null\n")
    with pytest.raises(ConfigError, match=rf"{section}: must be"):
        load_config(file, StepState(), {})


def test_the_consumers_file_knows_every_credential_type_on_its_own():
    # In a fresh interpreter that imported nothing else: the auth policies declare the types.
    code = (
        "from pathlib import Path; from mitmgateway.consumers import parse_consumers; "
        "doc = {'consumers': {'a': {'credentials': [{'type': 'jwt', 'sub': 'a@x'}]}}}; "
        "c = parse_consumers(doc, Path('c.yml')); "
        "print(c.find('jwt', 'a@x').consumer.id)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "a", result.stderr
