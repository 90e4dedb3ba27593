"""The gateway's configuration: Express Gateway's gateway.config.yml, loaded and validated once."""

from typing import Any

from .errors import ConfigError, KeyPath

__all__ = ["AdminListener", "ConfigError", "GatewayConfig", "HttpListener", "KeyPath", "load_config"]


def __getattr__(name: str) -> Any:
    # The loader imports every policy, and policies import config.errors/schema: importing it
    # lazily lets any module use the schema helpers without an import cycle.
    if name in ("AdminListener", "GatewayConfig", "HttpListener", "load_config"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(name)
