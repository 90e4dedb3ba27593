"""The errors a configuration can raise, and the key paths they name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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
        """This error as found in `file`, unless it already names the file it comes from."""
        return ConfigError(self.path, self.reason, self.file or file)

    def _format(self) -> str:
        parts = [p for p in (self.file, self.path) if p]
        return ": ".join([*parts, self.reason])


class ConfigErrors(ConfigError):
    """Several independent errors of one file, reported together (one per line)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.path, first.reason, first.file)

    def in_file(self, file: str) -> ConfigErrors:
        return ConfigErrors([e.in_file(file) for e in self.errors])

    def _format(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ErrorCollector:
    """Keeps validating independent parts of a file after one fails, to report all at once."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def part(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as e:
            self.errors.extend(e.errors)
        except ConfigError as e:
            self.errors.append(e)

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)
