"""The gateway's configuration: Express Gateway's gateway.config.yml, loaded and validated once.

The schema toolkit (``errors``: `ConfigError` with file, line and key path; ``schema``: typed
options; ``source``: YAML/JSON with line numbers and ``${VAR}``), the model (``model``: every
section's frozen dataclass and `GatewayConfig`), and the assembly of a document into the model
(``assemble``: `load_config`; ``pipelines``: the pipelines' steps).
"""

from .errors import ConfigError, KeyPath

__all__ = ["ConfigError", "KeyPath"]
