"""The built-in policies; importing this package registers them by name."""

from . import (
    basic_auth,
    cache,
    cors,
    expression,
    headers,
    jwt,
    key_auth,
    log,
    oauth2_introspect,
    proxy,
    rate_limit,
    terminate,
    transformers,
)
from .base import POLICIES, BuildContext, Policy, StepState, register_policy

__all__ = [
    "POLICIES",
    "BuildContext",
    "Policy",
    "StepState",
    "basic_auth",
    "cache",
    "cors",
    "expression",
    "headers",
    "jwt",
    "key_auth",
    "log",
    "oauth2_introspect",
    "proxy",
    "rate_limit",
    "register_policy",
    "terminate",
    "transformers",
]
