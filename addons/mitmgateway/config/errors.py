"""The one error a configuration can raise, and the key paths it names."""

from __future__ import annotations


class KeyPath(str):
    """A dotted key path into the config file, e.g. ``pipelines.orders.policies[0]``."""

    __slots__ = ()

    def key(self, name: str) -> KeyPath:
        return KeyPath(f"{self}.{name}" if self else name)

    def index(self, i: int) -> KeyPath:
        return KeyPath(f"{self}[{i}]")


ROOT = KeyPath("")


class ConfigError(ValueError):
    """A config file that cannot be served: names the file, the key path and what is wrong."""

    def __init__(self, path: str, reason: str, file: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.file = file
        super().__init__(self._format())

    def in_file(self, file: str) -> ConfigError:
        return ConfigError(self.path, self.reason, file)

    def _format(self) -> str:
        parts = [p for p in (self.file, self.path) if p]
        return ": ".join([*parts, self.reason])
