"""Each mitmproxy layer's queue of events held while it is paused, as a list.

Written against mitmproxy 11.0.2's ``proxy/layer.py``: ``Layer.__init__`` makes
``_paused_event_queue`` with the module's ``collections.deque()`` (its only run-time use of
``collections``), and ``Layer`` uses it through ``append``, ``popleft`` and its truth value. An
empty deque is 760 bytes (its first block is allocated up front), an empty list 56; a client
connection with its upstream connection has seven layers, whose queues are almost always empty
(a layer queues events only while one of its hooks runs). The list costs a copy on ``popleft``,
nothing for queues of a few events.
"""

from __future__ import annotations

import types
from typing import Any

from mitmproxy.proxy import layer

from .patches import Patches


class EventQueue(list[Any]):
    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class SmallEventQueues:
    def __init__(self) -> None:
        self._patches = Patches()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(layer, "collections", lambda _: types.SimpleNamespace(deque=EventQueue))

    def uninstall(self) -> None:
        self._patches.restore()
