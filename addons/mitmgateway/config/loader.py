"""gateway.config.yml → one immutable, ready-to-serve `GatewayConfig`, or one `ConfigError`.

Everything is checked here, up front: unknown keys, types, policies used but not declared,
references to apiEndpoints and serviceEndpoints that do not exist, and every policy's action.
The request path only reads what this builds.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from ..clients import ClientResolver, parse_trusted_proxies
from ..conditions import parse_condition
from ..consumers import Consumers, parse_consumers
from ..https import HttpsListener, parse_https
from ..paths import PathRules
from ..pipeline import Pipeline, Step
from ..policies import POLICIES, BuildContext, StepState
from ..routing import ApiEndpoint, Router, parse_api_endpoint
from ..stores import RateLimitStore, StoreSettings, open_store
from ..stores.base import parse_store_settings
from ..upstreams.endpoints import ServiceEndpoint, build_upstream_trust, parse_service_endpoint
from ..upstreams.tls import UpstreamTrust
from .errors import ROOT, ConfigError, ErrorCollector, KeyPath
from .schema import (
    byte_size,
    check_type,
    check_unknown_keys,
    non_negative,
    option,
    parse_fields,
    require_list,
    require_mapping,
    unknown,
)
from .source import load_document

logger = logging.getLogger(__name__)

SYSTEM_CONFIG = "system.config.yml"
EMPTY_FILE = (
    "the file is empty: a gateway config needs http (or https), apiEndpoints, serviceEndpoints and pipelines"
)
AUTH_POLICIES = frozenset({"jwt", "key-auth", "basic-auth"})
CONSUMERS_FILE = "consumers.yml"
STREAM_BODIES_OVER = 1 << 20

# EG accepts the singular spelling of these sections.
SECTION_ALIASES = {
    "apiEndpoint": "apiEndpoints",
    "serviceEndpoint": "serviceEndpoints",
    "policy": "policies",
    "pipeline": "pipelines",
}
TOP_LEVEL_KEYS = (
    "http",
    "https",
    "admin",
    "apiEndpoints",
    "serviceEndpoints",
    "policies",
    "pipelines",
    "trustedProxies",
    "accessLog",
    "rateLimitStore",
    "consumers",
    "errors",
    "plugins",
    "limits",
    "paths",
    *SECTION_ALIASES,
)


def _port(value: Any, path: KeyPath) -> int:
    port = check_type(int, value, path)
    if not 0 < port < 65536:
        raise ConfigError(path, f"must be a TCP port (1-65535), got {port}")
    return port


@dataclass(frozen=True)
class HttpListener:
    port: int = option("port", parse=_port)
    hostname: str | None = option("hostname", None)


@dataclass(frozen=True)
class AdminListener:
    """Where /metrics, /health and /ready are served (EG's admin section; EG spells it `host`)."""

    port: int = option("port", parse=_port)
    host: str = option("host", "127.0.0.1")
    hostname: str | None = option("hostname", None)

    @property
    def address(self) -> str:
        return self.hostname or self.host


@dataclass(frozen=True)
class AccessLogSettings:
    path: str = option("path")
    """A file (relative to the config file's folder), or '-' for standard output."""


@dataclass(frozen=True)
class ErrorSettings:
    """The shape of the gateway's own answers: EG's text (or JSON on request), or always JSON."""

    format: Literal["text", "json"] = option("format", "text")


@dataclass(frozen=True)
class RequestLimits:
    """What one client request may take (``limits``); defaults are Node's, hence Express Gateway's.

    A size of 0 means no limit.
    """

    max_header_bytes: int = option("maxHeaderBytes", 16 << 10, parse=byte_size)
    """The request line and headers: 431 beyond."""
    max_body_bytes: int = option("maxBodyBytes", 0, parse=byte_size)
    """Any request body: 413 beyond. Bodies stream through, so none is held whole in memory..."""
    max_buffered_body_bytes: int = option("maxBufferedBodyBytes", 10 << 20, parse=byte_size)
    """...except for a step that needs the whole body (a body transformer, the cache): 413 beyond."""
    headers_timeout_ms: int = option("headersTimeoutMs", 60_000, parse=non_negative)
    """From the first byte of a request to the end of its headers: 408 beyond (slow clients)."""

    @functools.cached_property
    def held_body_bytes(self) -> int:
        """The most a request body held in memory (not streamed) may take; 0 for no limit."""
        return min((s for s in (self.max_body_bytes, self.max_buffered_body_bytes) if s), default=0)

    @functools.cached_property
    def stream_bodies_over(self) -> int:
        """Bodies larger than this pass through as they come (unless a step needs them whole)."""
        return min(STREAM_BODIES_OVER, self.held_body_bytes or STREAM_BODIES_OVER)


@dataclass(frozen=True)
class GatewayConfig:
    file: Path
    http: HttpListener | None
    router: Router
    clients: ClientResolver
    service_endpoints: Mapping[str, ServiceEndpoint]
    pipelines: Mapping[str, Pipeline]
    used_state: frozenset[Any]
    """The `StepState` keys this config's steps hold, so the rest can be dropped on swap."""
    admin: AdminListener | None = None
    access_log: Path | None = None
    """None: no access log; Path('-'): standard output."""
    consumers: Consumers = Consumers()
    json_errors: bool = False
    limits: RequestLimits = RequestLimits()
    path_rules: PathRules = PathRules()
    watched_files: tuple[Path, ...] = ()
    """Every file this config was read from: a change to any of them reloads it."""
    https: HttpsListener | None = None
    upstream_trust: UpstreamTrust = UpstreamTrust({})

    @property
    def listeners(self) -> list[str]:
        """Where it listens, as URLs (``*`` for every interface)."""
        listeners = [f"http://{self.http.hostname or '*'}:{self.http.port}"] if self.http else []
        if self.https is not None:
            listeners.append(f"https://{self.https.hostname or '*'}:{self.https.port}")
        return listeners

    @property
    def summary(self) -> str:
        """What this config serves, in one line (the startup log's)."""
        listeners = self.listeners
        endpoints = len({name for name, _, _ in self.router.endpoints})
        return (
            f"{', '.join(listeners)}; {_count(endpoints, 'apiEndpoint')} → "
            f"{_count(len(self.pipelines), 'pipeline')} "
            f"({', '.join(self.pipelines)}); serviceEndpoints {', '.join(self.service_endpoints) or 'none'}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _sections(document: Any) -> dict[str, Any]:
    document = require_mapping(document, ROOT)
    check_unknown_keys(document, TOP_LEVEL_KEYS, ROOT)
    sections = dict(document)
    for alias, name in SECTION_ALIASES.items():
        if alias in sections:
            if name in sections:
                raise ConfigError(KeyPath(alias), f"give either {alias} or {name}, not both")
            sections[name] = sections.pop(alias)
    return sections


def _api_endpoints(raw: Any, path: KeyPath, errors: ErrorCollector) -> dict[str, tuple[ApiEndpoint, ...]]:
    endpoints = {}
    for name, value in require_mapping(raw, path).items():
        with errors.part():
            endpoints[name] = _api_endpoint(value, path.key(name))
    return endpoints


def _api_endpoint(value: Any, entry_path: KeyPath) -> tuple[ApiEndpoint, ...]:
    if not isinstance(value, list):
        return (parse_api_endpoint(require_mapping(value, entry_path), entry_path),)
    if not value:
        raise ConfigError(entry_path, "must describe at least one endpoint")
    return tuple(
        parse_api_endpoint(require_mapping(entry, entry_path.index(i)), entry_path.index(i))
        for i, entry in enumerate(value)
    )


def _declared_policies(raw: Any, path: KeyPath) -> frozenset[str]:
    """The names ``policies`` lists. Express Gateway's generated config lists some this gateway
    does not have (oauth2...): that is fine until a pipeline uses one (an error there)."""
    names = {check_type(str, item, path.index(i)) for i, item in enumerate(require_list(raw, path))}
    if unknown := sorted(names - POLICIES.keys()):
        logger.warning(
            "policies lists %s, which this gateway does not have; no pipeline may use %s",
            ", ".join(unknown),
            "it" if len(unknown) == 1 else "them",
        )
    return frozenset(names)


class _Builder:
    """Builds pipelines from a validated document, collecting the state their steps hold."""

    def __init__(
        self,
        config_dir: Path,
        state: StepState,
        declared: frozenset[str],
        service_endpoints: Mapping[str, ServiceEndpoint],
        rate_limit_store: RateLimitStore,
        consumers: Consumers,
    ) -> None:
        self.config_dir = config_dir
        self.rate_limit_store = rate_limit_store
        self.consumers = consumers
        self.state = state
        self.declared = declared
        self.service_endpoints = service_endpoints
        self.used_state: set[Any] = set()

    def pipeline(self, name: str, raw: Any, path: KeyPath) -> tuple[Pipeline, tuple[str, ...]]:
        raw = require_mapping(raw, path)
        check_unknown_keys(raw, ("apiEndpoints", "policies"), path)
        if "apiEndpoints" not in raw:
            raise ConfigError(
                path.key("apiEndpoints"), "is required: name the apiEndpoints this pipeline serves"
            )
        endpoint_names = check_type(tuple[str, ...], raw["apiEndpoints"], path.key("apiEndpoints"))
        steps: list[Step] = []
        policies_path = path.key("policies")
        errors = ErrorCollector()
        for i, entry in enumerate(require_list(raw.get("policies", []), policies_path)):
            with errors.part():
                steps.extend(self.policy_steps(name, entry, policies_path.index(i), i))
        errors.raise_any()
        names = [step.policy_name for step in steps]
        if "cache" in names and any(n in AUTH_POLICIES for n in names[names.index("cache") :]):
            raise ConfigError(
                policies_path,
                "a cache step comes before an authentication step: a cached answer would skip "
                "authentication; put cache after jwt, key-auth and basic-auth",
            )
        return Pipeline(name, tuple(steps)), endpoint_names

    def policy_steps(self, pipeline: str, entry: Any, path: KeyPath, index: int) -> list[Step]:
        entry = require_mapping(entry, path)
        if len(entry) != 1:
            raise ConfigError(path, "each entry names one policy: '- POLICY: [{action: ...}]'")
        ((policy_name, raw_steps),) = entry.items()
        if policy_name not in POLICIES:
            raise ConfigError(
                path.key(policy_name),
                unknown("policy", policy_name, sorted(POLICIES)),
            )
        if policy_name not in self.declared:
            raise ConfigError(
                path.key(policy_name),
                f"policy {policy_name!r} is used but not declared in policies",
            )
        steps_path = path.key(policy_name)
        # EG runs a policy listed without steps once, with an empty action.
        raw_steps = [{}] if raw_steps is None else raw_steps if isinstance(raw_steps, list) else [raw_steps]
        return [
            self.step(pipeline, policy_name, raw_step, steps_path.index(j), f"{index}.{j}")
            for j, raw_step in enumerate(raw_steps)
        ]

    def step(self, pipeline: str, policy_name: str, raw: Any, path: KeyPath, position: str) -> Step:
        raw = require_mapping(raw, path)
        check_unknown_keys(raw, ("condition", "action"), path)
        condition = parse_condition(raw["condition"], path.key("condition")) if "condition" in raw else None
        policy_cls = POLICIES[policy_name]
        action_path = path.key("action")
        action = parse_fields(policy_cls.Action, raw.get("action"), action_path)
        build = BuildContext(
            action_path,
            f"{pipeline}/{position}/{policy_name}",
            self.config_dir,
            self.service_endpoints,
            self.rate_limit_store,
            self.consumers,
            self.state,
            self.used_state,
        )
        return Step(policy_name, condition, policy_cls(action, build))


def build_config(document: Any, file: Path, state: StepState) -> GatewayConfig:
    sections = _sections(document)
    # First: a plugin's policies and conditions must be known before anything names them.
    load_plugins(sections.get("plugins"), KeyPath("plugins"), file.parent)
    # Independent parts are all checked, so one run reports every mistake; pipelines refer to
    # the rest and are only built once it is valid (else each reference would fail again).
    errors = ErrorCollector()
    http = https = trusted = None
    with errors.part():
        if sections.get("https") is not None:
            https = parse_https(sections["https"], KeyPath("https"), file.parent, _port)
    with errors.part():
        if sections.get("http") is not None:
            http = parse_fields(HttpListener, sections["http"], KeyPath("http"))
        elif sections.get("https") is None:
            raise ConfigError("http.port", "is required (or https): the port the gateway listens on")
    with errors.part():
        if http is not None and https is not None and http.port == https.port:
            raise ConfigError("https.port", f"is also http.port ({http.port}): give each its own port")
    with errors.part():
        trusted = parse_trusted_proxies(sections.get("trustedProxies", []), KeyPath("trustedProxies"))
    api_endpoints: dict[str, tuple[ApiEndpoint, ...]] = {}
    with errors.part():
        api_endpoints = _api_endpoints(sections.get("apiEndpoints"), KeyPath("apiEndpoints"), errors)
    services_path = KeyPath("serviceEndpoints")
    service_endpoints = {}
    with errors.part():
        for name, raw in require_mapping(sections.get("serviceEndpoints"), services_path).items():
            with errors.part():
                service_endpoints[name] = parse_service_endpoint(name, raw, services_path.key(name))
    upstream_trust = UpstreamTrust({})
    with errors.part():
        upstream_trust = build_upstream_trust(service_endpoints, file.parent, services_path)
    admin = access_log = None
    with errors.part():
        if sections.get("admin") is not None:
            admin = parse_fields(AdminListener, sections["admin"], KeyPath("admin"))
    with errors.part():
        if sections.get("accessLog") is not None:
            log_path = parse_fields(AccessLogSettings, sections["accessLog"], KeyPath("accessLog")).path
            access_log = Path(log_path) if log_path == "-" else file.parent / log_path
    declared: frozenset[str] = frozenset()
    with errors.part():
        declared = _declared_policies(sections.get("policies", []), KeyPath("policies"))
    store_settings = StoreSettings()
    with errors.part():
        if sections.get("rateLimitStore") is not None:
            store_settings = parse_store_settings(sections["rateLimitStore"], KeyPath("rateLimitStore"))
        elif (settings := system_config_store(file.parent)) is not None:
            store_settings = settings
    consumers = Consumers()
    with errors.part():
        consumers = load_consumers(file.parent, sections.get("consumers"))
    error_settings = ErrorSettings()
    with errors.part():
        if sections.get("errors") is not None:
            error_settings = parse_fields(ErrorSettings, sections["errors"], KeyPath("errors"))

    limits = RequestLimits()
    with errors.part():
        if sections.get("limits") is not None:
            limits = parse_fields(RequestLimits, sections["limits"], KeyPath("limits"))
    path_rules = PathRules()
    with errors.part():
        if sections.get("paths") is not None:
            path_rules = parse_fields(PathRules, sections["paths"], KeyPath("paths"))

    errors.raise_any()
    assert trusted is not None
    store_key = ("rateLimitStore", store_settings.identity())
    store = state.get(store_key, lambda: open_store(store_settings), set())
    builder = _Builder(file.parent, state, declared, service_endpoints, store, consumers)
    builder.used_state.add(store_key)

    pipelines: dict[str, Pipeline] = {}
    routes = []
    served_by: dict[str, str] = {}
    pipelines_path = KeyPath("pipelines")
    for name, raw in require_mapping(sections.get("pipelines"), pipelines_path).items():
        with errors.part():
            pipeline, endpoint_names = builder.pipeline(name, raw, pipelines_path.key(name))
            pipelines[name] = pipeline
            for i, endpoint_name in enumerate(endpoint_names):
                path = pipelines_path.key(name).key("apiEndpoints").index(i)
                if endpoint_name not in api_endpoints:
                    raise ConfigError(
                        path,
                        unknown("apiEndpoint", endpoint_name, api_endpoints, "declared"),
                    )
                if endpoint_name in served_by:
                    raise ConfigError(
                        path,
                        f"apiEndpoint {endpoint_name!r} is already served by pipeline "
                        f"{served_by[endpoint_name]!r}",
                    )
                served_by[endpoint_name] = name
                routes.extend(
                    (endpoint_name, endpoint, pipeline, KeyPath("apiEndpoints").key(endpoint_name))
                    for endpoint in api_endpoints[endpoint_name]
                )
    errors.raise_any()
    for name in api_endpoints.keys() - served_by.keys():
        logger.warning("apiEndpoint %r is not served by any pipeline", name)
    return GatewayConfig(
        file,
        http,
        Router(routes),
        ClientResolver(trusted),
        service_endpoints,
        pipelines,
        frozenset(builder.used_state),
        admin=admin,
        access_log=access_log,
        consumers=consumers,
        json_errors=error_settings.format == "json",
        limits=limits,
        path_rules=path_rules,
        # Watched even while missing: creating one of them takes effect too.
        watched_files=(
            file,
            consumers.file or file.parent / CONSUMERS_FILE,
            file.parent / SYSTEM_CONFIG,
            *(https.files if https is not None else ()),
            *upstream_trust.files,
        ),
        https=https,
        upstream_trust=upstream_trust,
    )


def load_plugins(raw: Any, path: KeyPath, config_dir: Path) -> None:
    """Import the modules ``plugins`` names: each registers its policies and conditions.

    A module is looked for where Python looks, and in the config file's folder."""
    if raw is not None and str(config_dir) not in sys.path:
        sys.path.append(str(config_dir))
    for i, name in enumerate(require_list(raw, path) if raw is not None else []):
        module = check_type(str, name, path.index(i))
        try:
            importlib.import_module(module)
        except Exception as e:  # whatever the plugin raised: one clear config error
            raise ConfigError(path.index(i), f"cannot import plugin {module!r}: {e}") from e


def load_consumers(config_dir: Path, named: Any) -> Consumers:
    """The consumers file the config names, or consumers.yml beside it if there is one."""
    if named is None:
        file = config_dir / CONSUMERS_FILE
        if not file.exists():
            return Consumers()
    else:
        file = config_dir / check_type(str, named, KeyPath("consumers"))
    try:
        document = load_document(file)
    except ConfigError as e:
        raise e.in_file(str(file)) from None
    try:
        return parse_consumers(document.data, file)
    except ConfigError as e:
        raise e.in_file(str(file), document.where) from None


def system_config_store(config_dir: Path) -> StoreSettings | None:
    """Express Gateway's ``db.redis`` from a system.config.yml beside the gateway config."""
    system_file = config_dir / SYSTEM_CONFIG
    if not system_file.exists():
        return None
    try:
        document = load_document(system_file).data
        db = require_mapping(require_mapping(document, ROOT).get("db"), KeyPath("db"))
        raw = require_mapping(db.get("redis"), KeyPath("db.redis"))
        if not raw or raw.get("emulate"):
            return None  # EG's in-memory emulation: our memory store
        host = check_type(str, raw.get("host", "127.0.0.1"), KeyPath("db.redis.host"))
        port = _port(int(str(raw.get("port", 6379))), KeyPath("db.redis.port"))
        db_index = int(str(raw.get("db", 0)))
        password = raw.get("password")
        namespace = str(raw.get("namespace", StoreSettings.namespace))
    except ConfigError as e:  # before ValueError, which it is a kind of
        raise e.in_file(str(system_file)) from None
    except ValueError as e:
        raise ConfigError("db.redis", f"port and db must be numbers: {e}", str(system_file)) from None
    scheme = "rediss" if raw.get("tls") else "redis"
    auth = f":{quote(str(password), safe='')}@" if password else ""
    netloc = f"[{host}]" if ":" in host else host
    return StoreSettings(
        type="redis",
        url=f"{scheme}://{auth}{netloc}:{port}/{db_index}",
        namespace=namespace,
    )


def load_config(file: Path, state: StepState, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load, validate and build the config in `file`; a ConfigError names the file."""
    try:
        document = load_document(file, env)
    except ConfigError as e:
        raise e.in_file(str(file)) from None
    if document.data is None:
        raise ConfigError("", EMPTY_FILE, str(file))
    try:
        return build_config(document.data, file, state)
    except ConfigError as e:
        raise e.in_file(str(file), document.where) from None
