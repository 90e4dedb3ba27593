"""The built-in policies; importing this package registers them by name."""

from . import basic_auth, jwt, key_auth, proxy, rate_limit
from .base import POLICIES, BuildContext, Policy, StepState, register_policy

__all__ = [
    "POLICIES",
    "BuildContext",
    "Policy",
    "StepState",
    "basic_auth",
    "jwt",
    "key_auth",
    "proxy",
    "rate_limit",
    "register_policy",
]
