"""An example plugin: a policy and a condition of its own, used like the built-in ones.

In gateway.config.yml (the module is imported from where Python looks, or from the config's
folder)::

    plugins: [acme_policies]
    policies: [acme-tenant, proxy]
    pipelines:
      api:
        apiEndpoints: [api]
        policies:
          - acme-tenant:
              - condition: {name: acme-header, header: X-Beta, value: "1"}
                action: {tenants: [blue, green]}
          - proxy: [{action: {serviceEndpoint: backend}}]

``acme-tenant`` requires an ``X-Tenant`` header naming one of the configured tenants (403
otherwise) and forwards it as ``X-Acme-Tenant``; ``acme-header`` matches a header's exact value.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmgateway import (
    BuildContext,
    ConfigError,
    KeyPath,
    Policy,
    RequestContext,
    make_answer,
    option,
    register_condition,
    register_policy,
)


@dataclass(frozen=True)
class TenantAction:
    tenants: tuple[str, ...] = option("tenants")


@register_policy
class AcmeTenantPolicy(Policy):
    name = "acme-tenant"
    Action = TenantAction
    identity_headers = ("X-Acme-Tenant",)  # never taken from the client

    def __init__(self, action: TenantAction, build: BuildContext) -> None:
        if not action.tenants:
            raise ConfigError(build.path.key("tenants"), "must name at least one tenant")
        self.tenants = frozenset(action.tenants)

    def handle(self, ctx: RequestContext) -> None:
        tenant = ctx.flow.request.headers.get("X-Tenant")
        if tenant not in self.tenants:
            ctx.answer(make_answer(ctx.flow.request, 403, "Unknown tenant"))
            return
        ctx.flow.request.headers["X-Acme-Tenant"] = tenant


@dataclass(frozen=True)
class HeaderParams:
    header: str = option("header")
    value: str = option("value")


def _header_condition(params: HeaderParams, path: KeyPath):  # type: ignore[no-untyped-def]
    return lambda ctx: ctx.flow.request.headers.get(params.header) == params.value


register_condition("acme-header", HeaderParams, _header_condition)
