"""Replacing a few mitmproxy internals while the gateway is loaded, and restoring them after.

mitmproxy has no hook for these (its error page, what its HTTP/1 reader bounds or refuses); each
user says why where it replaces something. A code reload restores the originals before the new
code replaces them again. A mitmproxy whose internals changed shape runs without the replacement
(and says so) rather than not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Patches:
    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any | None]] = []

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set `owner.name` to ``make(original)``."""
        original = getattr(owner, name, None)
        if original is None:
            logger.warning("mitmproxy has no %s.%s: the gateway runs without its replacement", owner, name)
            return
        # An inherited method is replaced on `owner` only, and restored by removing it there.
        self._originals.append((owner, name, original if name in vars(owner) else None))
        setattr(owner, name, make(original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._originals.clear()


def method_guard(guard: Callable[..., Any]) -> Callable[[Any], Any]:
    """For `Patches.replace` on a layer method ``(self, event)``: calls ``guard(original, self, event)``."""

    def make(original: Any) -> Any:
        def guarded(layer: Any, event: Any) -> Any:
            return guard(original, layer, event)

        guarded.__name__ = original.__name__
        return guarded

    return make
