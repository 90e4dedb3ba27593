"""Upstream connections: each one mitmproxy is about to open, checked against its url's health.

mitmproxy's server_* hooks see connections, not flows: the gate tells this addon which upstream
each client connection's request is about to go to (`expect`), and this addon lets the target
check its url is reachable before mitmproxy connects, send it to another url of the pool if not
(nothing of the request was sent yet), and count the connection's success or failure.
"""

from __future__ import annotations

import weakref

from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from ..upstreams.health import UpstreamTarget


class UpstreamConnections:
    def __init__(self) -> None:
        # The upstream each client connection is about to connect to; an entry lasts as long as
        # its request.
        self._targets: weakref.WeakValueDictionary[tuple[str, tuple[str, int]], UpstreamTarget] = (
            weakref.WeakValueDictionary()
        )

    def expect(self, client_id: str, target: UpstreamTarget) -> None:
        key = (client_id, target.address)
        waiting = self._targets.get(key)
        if waiting is not None and waiting is not target and waiting.pending:
            waiting.shared = target.shared = True
        self._targets[key] = target

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        key = (data.client.id, data.server.address)
        target = self._targets.get(key)
        if target is None or not target.pending:
            return
        await target.ensure_reachable(data.server)
        if target.address != key[1]:  # sent to another url
            if self._targets.get(key) is target:
                del self._targets[key]
            self._targets[(data.client.id, target.address)] = target

    def server_connected(self, data: ServerConnectionHookData) -> None:
        target = self._targets.get((data.client.id, data.server.address))
        if target is not None:
            target.connected(data.server)

    server_connect_error = server_connected
