"""Upstream connections: each one mitmproxy is about to open, checked against its url's health and
its address's bound and given a parked socket when there is one; each one its client is done
with parked for the next client, and each one left idle closed (upstreams/pool.py).

mitmproxy's server_* hooks see connections, not flows: the gate tells this addon which upstream
each client connection's request is about to go to (`expect`), and this addon lets the target
check its url is reachable before mitmproxy connects, send it to another url of the pool if not
(nothing of the request was sent yet), and count the connection's success or failure. What each
client connection has in flight (its requests; a WebSocket until it ends) tells which upstream
connections are idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Mapping

from mitmproxy import connection, http, tls
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from ..config.model import GatewayConfig
from ..mitm import sockets
from ..mitm.proxyserver import close_server_connection, connection_handler
from ..upstreams.health import UpstreamTarget
from ..upstreams.pool import AddressPool, ClientActivity, OpenConnection, PoolSettings, Room

REAP_SECONDS = 0.5
Address = tuple[str, int]
_AUTHENTICATES_THE_CONNECTION = (b"ntlm", b"negotiate")
_BODILESS_STATUS = (204, 304)


def exchange_ended(flow: http.HTTPFlow) -> bool:
    """Whether the upstream's answer ended where mitmproxy took it to: a final answer (not a 1xx,
    after which the real one still comes), whose head announces no body it must not have (to a
    HEAD, a 204 or a 304, a length that bytes may yet follow), on a connection no scheme
    authenticates as a whole (NTLM, Negotiate: the next client would be the first). Only then may
    its connection serve another client."""
    request, response = flow.request, flow.response
    if response is None or response.status_code < 200:
        return False
    if request.method == "HEAD" or response.status_code in _BODILESS_STATUS:
        headers = response.headers
        if "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
            return False
    for value in (*request.headers.get_all("authorization"), *response.headers.get_all("www-authenticate")):
        if value.encode().lower().startswith(_AUTHENTICATES_THE_CONNECTION):
            return False
    return True


class UpstreamConnections:
    def __init__(self) -> None:
        # The upstream each client connection is about to connect to; an entry lasts as long as
        # its request.
        self._targets: weakref.WeakValueDictionary[tuple[str, Address], UpstreamTarget] = (
            weakref.WeakValueDictionary()
        )
        self._settings: Mapping[Address, PoolSettings] = {}
        self._pools: dict[Address, AddressPool] = {}
        self._activity: dict[str, ClientActivity] = {}
        self._reserved: dict[str, Room] = {}
        """Upstream connections given room in their pool (and maybe a parked socket), being opened."""
        self._reaper: asyncio.Task[None] | None = None
        self._handover = sockets.SocketHandover()
        self._tls_settings = 0
        """Counts the changes of what verifies an upstream's TLS (the config's CA stores, mitmproxy's
        options): a session verified before one goes to no connection after it."""
        self._resuming: dict[str, sockets.ParkedSocket] = {}
        """TLS connections given a parked socket, by server connection id, until their TLS starts."""

    def apply(self, config: GatewayConfig, previous: GatewayConfig | None) -> None:
        """Each upstream address's pool settings (the first serviceEndpoint naming it gives them)."""
        settings: dict[Address, PoolSettings] = {}
        for service in config.service_endpoints.values():
            for upstream in service.upstreams:
                settings.setdefault((upstream.host, upstream.port), service.pool)
        self._settings = settings
        for address, pool in self._pools.items():
            pool.settings = settings.get(address, PoolSettings())
        self._tls_settings += 1

    def configure(self, updated: set[str]) -> None:
        # Any option: several of mitmproxy's decide how an upstream is verified (ssl_insecure,
        # ssl_verify_upstream_trusted_ca, client_certs, the TLS versions), and they change rarely.
        self._tls_settings += 1

    def running(self) -> None:
        self._handover.install()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._close_idle_forever())

    def done(self) -> None:
        self._handover.uninstall()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for pool in self._pools.values():
            pool.close()

    def expect(self, client_id: str, target: UpstreamTarget) -> None:
        key = (client_id, target.address)
        waiting = self._targets.get(key)
        if waiting is not None and waiting is not target and waiting.pending:
            waiting.shared = target.shared = True
        self._targets[key] = target

    # What each client connection has in flight.

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._activity_of(flow.client_conn).in_flight.add(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # a WebSocket holds its connection until websocket_end
            if (opened := self._opened(flow.server_conn)) is not None:
                opened.reusable = exchange_ended(flow)
                opened.last_exchange = time.monotonic()
            self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if (opened := self._opened(flow.server_conn)) is not None:
            opened.reusable = False
        self._finished(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        activity = self._activity.pop(client.id, None)
        if activity is not None and activity.in_flight:
            return  # a request cut off: its upstream connections close with the client
        handler = connection_handler(client)
        for server in list(handler.transports) if handler is not None else ():
            pool = self._pools.get(server.address) if isinstance(server, connection.Server) else None
            if pool is not None:
                pool.park(server.id)

    def would_give_back(self, client: connection.Client) -> bool:
        """Whether `client` leaving now would give every upstream connection it holds open back to
        its pool: nothing in flight, each one reusable and detachable. An NTLM-authenticated
        connection, say, would close instead, and the client's next request pay for a new one. A
        connection no pool knows (opened before a code reload) closes with its client: that is
        how the pools of the code now running come to count every connection again."""
        activity = self._activity.get(client.id)
        if activity is not None and activity.in_flight:
            return False
        handler = connection_handler(client)
        if handler is None:
            return False
        for server in handler.transports:
            if not isinstance(server, connection.Server) or server.state is connection.ConnectionState.CLOSED:
                continue
            opened = self._opened(server)
            if opened is None:
                continue
            if opened.closing or not opened.reusable or not sockets.detachable(client, server):
                return False
        return True

    def _opened(self, server: connection.Server) -> OpenConnection | None:
        pool = self._pools.get(server.address) if server.address else None
        return pool.open.get(server.id) if pool is not None else None

    def _activity_of(self, client: connection.Client) -> ClientActivity:
        activity = self._activity.get(client.id)
        if activity is None:
            activity = self._activity[client.id] = ClientActivity()
        return activity

    def _finished(self, flow: http.HTTPFlow) -> None:
        server = flow.server_conn
        if flow.client_conn.alpn == b"h2" and server.alpn != b"h2" and flow.websocket is None:
            # mitmproxy never reuses an HTTP/1 upstream connection for an HTTP/2 client (each of
            # its requests gets its own): done with, it goes at once, or one busy HTTP/2 client
            # would fill the pool with connections nothing will use again.
            pool = self._pools.get(server.address) if server.address else None
            if pool is not None:
                pool.close_idle(server.id, even_if_busy=True)
        activity = self._activity.get(flow.client_conn.id)
        if activity is not None and flow.id in activity.in_flight:
            activity.in_flight.discard(flow.id)
            if not activity.in_flight:
                activity.idle_since = time.monotonic()
                pool = self._pools.get(server.address) if server.address else None
                if pool is not None and pool.waiting:
                    pool.park(server.id)  # a request waits for room: it takes this socket now

    # The upstream connections.

    def _pool(self, address: Address) -> AddressPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = AddressPool(self._settings.get(address, PoolSettings()))
        return pool

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        key = (data.client.id, data.server.address)
        target = self._targets.get(key)
        if target is not None and target.pending:
            await target.ensure_reachable(data.server)
            if target.address != key[1]:  # sent to another url
                if self._targets.get(key) is target:
                    del self._targets[key]
                self._targets[(data.client.id, target.address)] = target
        if data.server.error is None and data.server.address is not None:
            pool = self._pool(data.server.address)
            # Not for a connection bound to a local address (connect_addr), nor for an HTTP/2
            # client's request (its HTTP/1 connection is closed after one exchange).
            take_parked = data.server.sockname is None and data.client.alpn != b"h2"
            room = await pool.reserve(pool.settings.idle_timeout_ms / 1000 + 10, take_parked)
            if room is not None:
                if room.socket is not None:
                    assert isinstance(room.socket, sockets.ParkedSocket)
                    if room.socket.verified_for == self._verified_for(data.server):
                        sockets.deliver(room.socket)
                        if room.socket.tls is not None:
                            self._resuming[data.server.id] = room.socket
                    else:  # verified for another name or other settings, or TLS where none is wanted
                        room.socket.close()
                        room = Room()  # the room it held is a new connection's
                self._reserved[data.server.id] = room
                # This hook runs in the task that opens and then serves the connection: when it
                # ends, however it ends (the client gone before the connection was made, no
                # server_disconnected), the connection's room is given back.
                server_id, address = data.server.id, data.server.address
                task = asyncio.current_task()
                if task is not None:
                    task.add_done_callback(lambda _task: self._forget(server_id, address))
            else:
                busy = pool.settings.max_connections
                data.server.error = f"all {busy} connections to this upstream are busy (pool.maxConnections)"

    def server_connected(self, data: ServerConnectionHookData) -> None:
        target = self._targets.get((data.client.id, data.server.address))
        if target is not None:
            target.connected(data.server)
        if self._reserved.pop(data.server.id, None) is None:
            return
        client, server = data.client, data.server
        # A client gone meanwhile gets no activity entry back: its connection closes with it.
        activity = self._activity.get(client.id) or ClientActivity()
        resumed = self._resuming.get(server.id)
        if resumed is not None and resumed.taken:
            verified_for = resumed.verified_for  # as its handshake was, whatever changed since
        else:
            verified_for = self._verified_for(server)
        opened = OpenConnection(
            lambda: close_server_connection(client, server),
            activity,
            lambda released: sockets.detach(client, server, released, verified_for),
        )
        self._pools[server.address].connected(server.id, opened)

    def tls_start_server(self, data: tls.TlsData) -> None:
        """A TLS connection that took a parked socket goes on with the session that came with it
        (in place of the one mitmproxy, or the caFile's Listeners, would start afresh), unless
        what verifies the upstream changed since it was delivered (a reload in that instant): then
        the connection closes, and its request is answered as on any failed upstream connection.
        A reload may cost that request; it never lets a session verified otherwise serve it."""
        socket = self._resuming.pop(data.conn.id, None)
        if socket is None or not socket.taken:
            return
        if socket.verified_for == self._verified_for(data.conn):
            data.ssl_conn = socket.tls
        else:
            socket.close()

    def _verified_for(self, server: connection.Connection) -> tuple[str | None, int] | None:
        """What a TLS connection to `server` is verified for: its server name, under the TLS
        settings in force (None without TLS: a plain socket)."""
        return (server.sni, self._tls_settings) if server.tls else None

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        target = self._targets.get((data.client.id, data.server.address))
        if target is not None:
            target.connected(data.server)
        room = self._reserved.pop(data.server.id, None)
        if room is not None:
            # A parked socket given to a connection another addon killed first stays parked.
            self._pools[data.server.address].give_back(room if sockets.take_undelivered() else Room())

    def server_disconnected(self, data: ServerConnectionHookData) -> None:
        if data.server.address in self._pools:
            self._pools[data.server.address].disconnected(data.server.id)

    def _forget(self, server_id: str, address: Address) -> None:
        self._resuming.pop(server_id, None)
        pool = self._pools.get(address)
        if pool is None:
            return
        room = self._reserved.pop(server_id, None)
        if room is not None:
            if room.socket is not None:
                room.socket.close()  # given to a connection that never took it: gone with it
            pool.failed()
        else:
            pool.disconnected(server_id)  # nothing if it is gone already

    async def _close_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_SECONDS)
            now = time.monotonic()
            for pool in self._pools.values():
                for server_id in pool.expired(now):
                    with contextlib.suppress(Exception):  # a connection already going: nothing to do
                        pool.close_idle(server_id)
