"""mitmgateway: an API gateway made of mitmproxy addons, configured like Express Gateway.

What a plugin needs (``plugins: [my_company.policies]`` in gateway.config.yml imports the module,
which registers what it defines; see examples/plugins/acme_policies.py):

- `Policy`, `register_policy`, `BuildContext`: a policy class with an ``Action`` dataclass
- `register_condition`: a condition, with its parameters dataclass and a builder
- `option`: declares an action's or a condition's parameter (name in the config, default, parser)
- `RequestContext`: what a policy or condition sees of a request (``ctx.decision``, a `Decision`,
  is what the gateway decides about it); `make_answer`: the gateway's own answer (text, or JSON
  for clients asking for it)
- `ConfigError`, `KeyPath`: refuse a bad parameter with its key path
"""

from typing import Any

_API = {
    "BuildContext": "mitmgateway.policies.base",
    "Policy": "mitmgateway.policies.base",
    "register_policy": "mitmgateway.policies.base",
    "register_condition": "mitmgateway.conditions",
    "option": "mitmgateway.config.schema",
    "ConfigError": "mitmgateway.config.errors",
    "KeyPath": "mitmgateway.config.errors",
    "RequestContext": "mitmgateway.context",
    "Decision": "mitmgateway.decision",
    "make_answer": "mitmgateway.answers",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    # Imported on first use: the config package and the policies import one another, and a
    # plugin is itself imported while a config loads.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(name)
