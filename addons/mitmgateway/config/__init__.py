"""The gateway's configuration: Express Gateway's gateway.config.yml, loaded and validated once."""

from .errors import ConfigError, KeyPath
from .loader import AdminListener, GatewayConfig, HttpListener, load_config

__all__ = ["AdminListener", "ConfigError", "GatewayConfig", "HttpListener", "KeyPath", "load_config"]
