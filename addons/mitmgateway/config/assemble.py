"""gateway.config.yml → one immutable, ready-to-serve `GatewayConfig`, or one `ConfigError`.

Everything is checked here, up front: unknown keys, types, policies used but not declared,
references to apiEndpoints and serviceEndpoints that do not exist, and every policy's action.
Each top-level section has its reader in `SECTIONS`; they are independent of each other, so all
of them are read and every mistake is reported in one run. The pipelines refer to the rest and are
built once it is valid. The request path only reads what this builds.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clients import ClientResolver, is_loopback, parse_trusted_proxies
from ..consumers import ConsumerDirectory
from ..https import parse_https
from ..paths import PathRules
from ..pipeline import Pipeline
from ..policies import StepState
from ..policies.key_auth import KEY_AUTH_CREDENTIAL
from ..routing import Router
from ..stores import StoreSettings
from ..stores.base import parse_store_settings
from ..upstreams.endpoints import build_upstream_trust, parse_service_endpoint
from ..upstreams.tls import UpstreamTrust
from .companion_files import SYSTEM_CONFIG, consumers_file, load_consumers, system_config_store
from .errors import ROOT, ConfigError, ErrorCollector, KeyPath
from .model import (
    AccessLogSettings,
    AdminListener,
    ErrorSettings,
    GatewayConfig,
    HttpListener,
    RequestLimits,
    TracingSettings,
)
from .pipelines import PipelineBuilder, api_endpoints, declared_policies
from .schema import (
    check_type,
    check_unknown_keys,
    parse_fields,
    require_list,
    require_mapping,
    unknown,
)
from .source import load_document

logger = logging.getLogger("mitmgateway.config")

EMPTY_FILE = (
    "the file is empty: a gateway config needs http (or https), apiEndpoints, serviceEndpoints and pipelines"
)
# EG accepts the singular spelling of these sections.
SECTION_ALIASES = {
    "apiEndpoint": "apiEndpoints",
    "serviceEndpoint": "serviceEndpoints",
    "policy": "policies",
    "pipeline": "pipelines",
}


@dataclass(frozen=True)
class Reading:
    """What a section's reader may consult: where the config file is, the document's sections,
    what the readers before it made of theirs, and the error collector (for a section whose
    entries are each checked on their own)."""

    file: Path
    errors: ErrorCollector
    sections: Mapping[str, Any]
    parts: Mapping[str, Any]

    @property
    def config_dir(self) -> Path:
        return self.file.parent


Section = Callable[[Any, KeyPath, Reading], Any]


def _fields(cls: type, default: Any = None) -> Section:
    """A section that is one dataclass of options (`default` when absent)."""
    return lambda raw, path, _reading: default if raw is None else parse_fields(cls, raw, path)


def _http(raw: Any, path: KeyPath, reading: Reading) -> HttpListener | None:
    if raw is None:
        if reading.sections.get("https") is None:
            raise ConfigError("http.port", "is required (or https): the port the gateway listens on")
        return None
    http = parse_fields(HttpListener, raw, path)
    https = reading.parts.get("https")
    if https is not None and http.port == https.port:
        raise ConfigError("https.port", f"is also http.port ({http.port}): give each its own port")
    return http


def _admin(raw: Any, path: KeyPath, _reading: Reading) -> AdminListener | None:
    if raw is None:
        return None
    admin = parse_fields(AdminListener, raw, path)
    if admin.token_hash is not None and not KEY_AUTH_CREDENTIAL.is_stored_form(admin.token_hash):
        raise ConfigError(path.key("tokenHash"), "must be sha256:HEX, as mitmgateway admin-token prints it")
    if admin.token_hash is None and not is_loopback(admin.address):
        raise ConfigError(
            path.key("hostname" if admin.hostname else "host"),
            f"{admin.address} is not loopback: the admin API changes consumers and the config, so off "
            "loopback it needs a credential (admin.tokenHash, from mitmgateway admin-token)",
        )
    return admin


def _upstream_trust(_raw: None, _path: KeyPath, reading: Reading) -> UpstreamTrust:
    services = reading.parts.get("serviceEndpoints", {})
    return build_upstream_trust(services, reading.config_dir, KeyPath("serviceEndpoints"))


def _service_endpoints(raw: Any, path: KeyPath, reading: Reading) -> dict[str, Any]:
    services = {}
    for name, entry in require_mapping(raw, path).items():
        with reading.errors.part():
            services[name] = parse_service_endpoint(name, entry, path.key(name))
    return services


def _access_log(raw: Any, path: KeyPath, reading: Reading) -> Path | None:
    if raw is None:
        return None
    log_path = parse_fields(AccessLogSettings, raw, path).path
    return Path(log_path) if log_path == "-" else reading.config_dir / log_path


def _rate_limit_store(raw: Any, path: KeyPath, reading: Reading) -> StoreSettings:
    if raw is not None:
        return parse_store_settings(raw, path)
    return system_config_store(reading.config_dir) or StoreSettings()


SECTIONS: dict[str, Section] = {
    "https": lambda raw, path, reading: None if raw is None else parse_https(raw, path, reading.config_dir),
    "http": _http,
    "trustedProxies": lambda raw, path, _reading: parse_trusted_proxies(raw, path),
    "apiEndpoints": lambda raw, path, reading: api_endpoints(raw, path, reading.errors),
    "serviceEndpoints": _service_endpoints,
    # Not a section: the CA files serviceEndpoints name, read as soon as they are known.
    "upstreamTrust": _upstream_trust,
    "admin": _admin,
    "accessLog": _access_log,
    "policies": lambda raw, path, _reading: declared_policies(raw, path),
    "rateLimitStore": _rate_limit_store,
    "consumers": lambda raw, path, reading: load_consumers(reading.config_dir, raw),
    "errors": _fields(ErrorSettings, ErrorSettings()),
    "limits": _fields(RequestLimits, RequestLimits()),
    "paths": _fields(PathRules, PathRules()),
    "tracing": lambda raw, path, _reading: None if raw is None else parse_fields(TracingSettings, raw, path),
}
"""Each top-level section's reader, in the order their errors are reported (``plugins`` is read
first, ``pipelines`` last)."""
ABSENT = {"trustedProxies": [], "policies": []}
"""What an absent section reads as, where that is not null (``policies: null`` is an error)."""
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
    "tracing",
    *SECTION_ALIASES,
)


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


def build_config(document: Any, file: Path, state: StepState) -> GatewayConfig:
    sections = _sections(document)
    # First: a plugin's policies and conditions must be known before anything names them.
    load_plugins(sections.get("plugins"), KeyPath("plugins"), file.parent)
    parts: dict[str, Any] = {}
    reading = Reading(file, ErrorCollector(), sections, parts)
    errors = reading.errors
    for key, read in SECTIONS.items():
        with errors.part():
            parts[key] = read(sections.get(key, ABSENT.get(key)), KeyPath(key), reading)
    errors.raise_any()
    upstream_trust: UpstreamTrust = parts["upstreamTrust"]

    store_settings: StoreSettings = parts["rateLimitStore"]
    store_key = ("rateLimitStore", store_settings.identity())
    store = state.get(store_key, lambda: state.open_store(store_settings), set())
    consumers: ConsumerDirectory = parts["consumers"]
    if isinstance(consumers, StoreSettings):  # kept in Redis: followed across reloads
        consumers_key = ("sharedConsumers", consumers.identity())
        consumers = state.get(consumers_key, lambda: state.shared_consumers(parts["consumers"]), set())
    builder = PipelineBuilder(
        file.parent, state, parts["policies"], parts["serviceEndpoints"], store, consumers
    )
    builder.used_state.add(store_key)
    if isinstance(parts["consumers"], StoreSettings):
        builder.used_state.add(consumers_key)
    pipelines, routes = _pipelines(sections.get("pipelines"), builder, parts["apiEndpoints"], errors)
    https = parts["https"]
    return GatewayConfig(
        file,
        parts["http"],
        Router(routes),
        ClientResolver(parts["trustedProxies"]),
        parts["serviceEndpoints"],
        pipelines,
        frozenset(builder.used_state),
        admin=parts["admin"],
        access_log=parts["accessLog"],
        consumers=consumers,
        json_errors=parts["errors"].format == "json",
        limits=parts["limits"],
        path_rules=parts["paths"],
        # Watched even while missing: creating one of them takes effect too.
        watched_files=(
            file,
            consumers_file(file.parent, consumers),
            file.parent / SYSTEM_CONFIG,
            *(https.files if https is not None else ()),
            *upstream_trust.files,
        ),
        https=https,
        tracing=parts["tracing"],
        upstream_trust=upstream_trust,
    )


def _pipelines(
    raw: Any, builder: PipelineBuilder, endpoints: Mapping[str, Any], errors: ErrorCollector
) -> tuple[dict[str, Pipeline], list[Any]]:
    """The pipelines, and the routes to them: each apiEndpoint served by one pipeline."""
    pipelines: dict[str, Pipeline] = {}
    routes = []
    served_by: dict[str, str] = {}
    pipelines_path = KeyPath("pipelines")
    for name, entry in require_mapping(raw, pipelines_path).items():
        with errors.part():
            pipeline, endpoint_names = builder.pipeline(name, entry, pipelines_path.key(name))
            pipelines[name] = pipeline
            for i, endpoint_name in enumerate(endpoint_names):
                path = pipelines_path.key(name).key("apiEndpoints").index(i)
                if endpoint_name not in endpoints:
                    raise ConfigError(path, unknown("apiEndpoint", endpoint_name, endpoints, "declared"))
                if endpoint_name in served_by:
                    raise ConfigError(
                        path,
                        f"apiEndpoint {endpoint_name!r} is already served by pipeline "
                        f"{served_by[endpoint_name]!r}",
                    )
                served_by[endpoint_name] = name
                routes.extend(
                    (endpoint_name, endpoint, pipeline, KeyPath("apiEndpoints").key(endpoint_name))
                    for endpoint in endpoints[endpoint_name]
                )
    errors.raise_any()
    for name in endpoints.keys() - served_by.keys():
        logger.warning("apiEndpoint %r is not served by any pipeline", name)
    return pipelines, routes


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
