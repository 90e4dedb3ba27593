"""The errors a configuration can raise, and the key paths they name."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class KeyPath(str):
    """A dotted key path into the config file, e.g. ``pipelines.orders.policies[0]``."""

    __slots__ = ()

    def key(self, name: str) -> KeyPath:
        return KeyPath(f"{self}.{name}" if self else name)

    def index(self, i: int) -> KeyPath:
        return KeyPath(f"{self}[{i}]")


ROOT = KeyPath("")


Where = Callable[[str], "tuple[int, int] | None"]
"""The line and column (1-based) a key path was written at in its file, if known."""


class ConfigError(ValueError):
    """A config file that cannot be served: names the file, the line and column where the
    document gives them, the key path and what is wrong."""

    def __init__(
        self,
        path: str,
        reason: str,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = path
        self.reason = reason
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self._format())

    def in_file(self, file: str, where: Where | None = None) -> ConfigError:
        """This error as found in `file` (at the place `where` gives for its key path), unless it
        already names the file it comes from."""
        if self.file is not None:
            return self
        place = (self.line, self.column) if self.line is not None else where(self.path) if where else None
        return ConfigError(self.path, self.reason, file, *(place or (None, None)))

    def _format(self) -> str:
        place = self.file
        if place is not None and self.line is not None:
            place += f":{self.line}:{self.column}"
        elif place is None and self.line is not None:
            place = f"line {self.line}, column {self.column}"
        return ": ".join([p for p in (place, self.path) if p] + [self.reason])


class ConfigErrors(ConfigError):
    """Several independent errors of one file, reported together (one per line)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.path, first.reason, first.file, first.line, first.column)

    def in_file(self, file: str, where: Where | None = None) -> ConfigErrors:
        return ConfigErrors([e.in_file(file, where) for e in self.errors])

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
