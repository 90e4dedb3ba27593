"""A 101 Switching Protocols the gateway did not ask for: answered 502, never a tunnel.

The front door forwards ``Upgrade`` only on a WebSocket handshake (front_door.py). An upstream may
still answer 101 to anything; mitmproxy would then make the upstream connection a pipe (written
against mitmproxy 11.0: ``_http1.should_make_pipe`` in ``Http1Connection.mark_done``) and, with
its ``rawtcp``, carry every later client byte through it unjudged. The gateway answers such a
101 with 502 (hooks/response_side.py) and marks it here, so that the upstream connection it came
on is closed instead of piped, and never carries another request.
"""

from __future__ import annotations

import weakref
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.layers.http import _http1

from .patches import Patches


class RefusedSwitches:
    def __init__(self) -> None:
        self._patches = Patches()
        self._refused: weakref.WeakSet[http.Response] = weakref.WeakSet()

    def install(self) -> None:
        if not self._patches.applied:
            self._patches.replace(_http1, "should_make_pipe", self._guard)

    def uninstall(self) -> None:
        self._patches.restore()

    def refuse(self, switch: http.Response) -> None:
        """`switch`, the upstream's 101, ends its connection rather than making it a pipe."""
        switch.headers["connection"] = "close"  # what mitmproxy reads to close it
        self._refused.add(switch)

    def _guard(self, original: Any) -> Any:
        def should_make_pipe(request: http.Request, response: http.Response) -> bool:
            return response not in self._refused and original(request, response)

        return should_make_pipe
