"""mitmproxy's proxy server addon, from outside: its connection handlers and its listeners.

Written against mitmproxy 11.0's ``addons/proxyserver.py``: ``Proxyserver.connections`` (the
handler of each client connection, by client id), ``Proxyserver.servers.update`` and
``Proxyserver.servers[mode]`` (the listeners), and the handlers' ``server_event``, ``on_timeout``,
``close_connection`` and ``transports``. It has no public API for any of them.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import connection, ctx


def _proxyserver() -> Any:
    return ctx.master.addons.get("proxyserver")


def connection_handler(client: connection.Client) -> Any:
    """mitmproxy's ConnectionHandler for `client`, or None once the connection is gone."""
    return getattr(_proxyserver(), "connections", {}).get(client.id)


async def stop_listening() -> None:
    """Close every listening socket (connections already open stay)."""
    await _proxyserver().servers.update([])


def live_handlers() -> list[Any]:
    """The ConnectionHandler of every open client connection."""
    return list(_proxyserver().connections.values())


def listener_of(client: connection.Client) -> Any | None:
    """mitmproxy's ServerInstance whose listener accepted `client`, or None once it is gone."""
    try:
        return _proxyserver().servers[client.proxy_mode]
    except KeyError:
        return None


def open_connections() -> int:
    return len(_proxyserver().connections)


def close_server_connection(client: connection.Client, server: connection.Server) -> None:
    """Close one of `client`'s upstream connections, as mitmproxy's own close command does: it is
    marked closed at once (never used again) and its reader stops."""
    handler = connection_handler(client)
    if handler is not None and server in handler.transports:
        handler.close_connection(server)


def close_all_connections() -> None:
    for handler in list(_proxyserver().connections.values()):
        # A handler whose client is already gone (its teardown still running) is skipped:
        # close_connection would not find the client's transport.
        if handler.client in handler.transports:
            handler.close_connection(handler.client)
