"""Pipelines from a validated document: each entry's policy, its steps, their conditions and
actions, built once and collecting the long-lived state their steps hold."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ..conditions import parse_condition, reads_body
from ..consumers import ConsumerDirectory
from ..pipeline import Pipeline, Step
from ..policies import POLICIES, BuildContext, StepState
from ..routing import ApiEndpoint, parse_api_endpoint
from ..stores import RateLimitStore
from ..upstreams.endpoints import ServiceEndpoint
from .errors import ConfigError, ErrorCollector, KeyPath
from .schema import check_type, check_unknown_keys, parse_fields, require_list, require_mapping, unknown

logger = logging.getLogger("mitmgateway.config")


def api_endpoints(raw: Any, path: KeyPath, errors: ErrorCollector) -> dict[str, tuple[ApiEndpoint, ...]]:
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


OAUTH2_REFUSED = (
    "Express Gateway's oauth2 policy makes the gateway an authorization server with its own login "
    "pages, which this gateway is not: let an identity provider issue the tokens and check them "
    "with jwt (secretOrPublicKeyFile, or jwksUri for its key set), or with oauth2-introspect"
)


def declared_policies(raw: Any, path: KeyPath) -> frozenset[str]:
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


class PipelineBuilder:
    """Builds pipelines from a validated document, collecting the state their steps hold."""

    def __init__(
        self,
        config_dir: Path,
        state: StepState,
        declared: frozenset[str],
        service_endpoints: Mapping[str, ServiceEndpoint],
        rate_limit_store: RateLimitStore,
        consumers: ConsumerDirectory,
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
        if "cache" in names and any(s.policy.authenticates for s in steps[names.index("cache") :]):
            authenticating = sorted({s.policy_name for s in steps if s.policy.authenticates})
            raise ConfigError(
                policies_path,
                "a cache step comes before an authentication step: a cached answer would skip "
                f"authentication; put cache after {', '.join(authenticating)}",
            )
        return Pipeline(name, tuple(steps)), endpoint_names

    def policy_steps(self, pipeline: str, entry: Any, path: KeyPath, index: int) -> list[Step]:
        entry = require_mapping(entry, path)
        if len(entry) != 1:
            raise ConfigError(path, "each entry names one policy: '- POLICY: [{action: ...}]'")
        ((policy_name, raw_steps),) = entry.items()
        if policy_name == "oauth2":
            raise ConfigError(path.key(policy_name), OAUTH2_REFUSED)
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
        check_unknown_keys(raw, ("condition", "action", "mode"), path)
        mode = check_type(Literal["enforce", "report"], raw.get("mode", "enforce"), path.key("mode"))
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
            reporting=mode == "report",
        )
        return Step(
            policy_name,
            condition,
            policy_cls(action, build),
            reporting=build.reporting,
            reads_body=condition is not None and reads_body(condition),
        )
