"""A code reload's hand-over of resting clients (hooks/idle_clients.py), on real sockets: taken
over by the next code's addon, or, if none takes them, served again."""

from __future__ import annotations

import asyncio
import socket
import time

from mitmproxy.test import taddons

from mitmgateway.hooks.idle_clients import HANDED_OVER, IdleClients
from mitmgateway.hooks.upstream_connections import UpstreamConnections
from mitmgateway.mitm.resting_clients import RestingClient
from mitmgateway.observe.metrics import GatewayMetrics


class Listener:
    """Where a resting client goes once it is served again: what mitmproxy's ServerInstance is
    to it, a coroutine taking the connection's reader and writer; this one keeps what it reads."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read(100))
        writer.close()


def idle_clients() -> IdleClients:
    return IdleClients(GatewayMetrics(), UpstreamConnections())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_the_next_codes_addon_takes_resting_clients_over_and_serves_them_when_they_send():
    async def run() -> None:
        with taddons.context() as tctx:
            listener = Listener()
            client, kept = socket.socketpair()
            kept.setblocking(False)
            previous, following = idle_clients(), idle_clients()
            previous.running()
            previous._rest(RestingClient(kept, listener, time.time()))
            previous.done()
            assert getattr(tctx.master, HANDED_OVER) is previous._resting
            following.running()
            await settle()
            assert not hasattr(tctx.master, HANDED_OVER)
            assert list(following._resting) == [kept.fileno()] and listener.received == []
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            await settle()
            assert listener.received == [b"GET / HTTP/1.1\r\n\r\n"] and not following._resting
            following.done()
            client.close()

    asyncio.run(run())


def test_resting_clients_no_next_code_takes_are_served_again():
    # (A reload whose code failed to build its addons, or has no such addon.)
    async def run() -> None:
        with taddons.context() as tctx:
            listener = Listener()
            client, kept = socket.socketpair()
            kept.setblocking(False)
            previous = idle_clients()
            previous.running()
            previous._rest(RestingClient(kept, listener, time.time()))
            previous.done()
            await settle()
            # Nobody took them: no longer resting, nor left on the master; served as they are.
            assert not hasattr(tctx.master, HANDED_OVER) and not previous._resting
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            await settle()
            assert listener.received == [b"GET / HTTP/1.1\r\n\r\n"]
            client.close()

    asyncio.run(run())


def test_a_resting_client_idle_past_the_timeout_is_closed_unless_it_just_sent():
    # mitmproxy closes a connection idle for its TCP_TIMEOUT; a resting one goes the same way,
    # but one whose request is already waiting is served rather than reset.
    async def run() -> None:
        with taddons.context():
            listener = Listener()
            silent, silent_kept = socket.socketpair()
            sending, sending_kept = socket.socketpair()
            for kept in (silent_kept, sending_kept):
                kept.setblocking(False)
            clients = idle_clients()
            long_ago = time.time() - 3600
            clients._rest(RestingClient(silent_kept, listener, long_ago))
            clients._rest(RestingClient(sending_kept, listener, long_ago))
            sending.sendall(b"GET / HTTP/1.1\r\n\r\n")
            clients._close_expired(time.time() - 600)
            await settle()
            assert not clients._resting
            silent.settimeout(1)
            assert silent.recv(1) == b""  # closed
            assert listener.received == [b"GET / HTTP/1.1\r\n\r\n"]  # served
            for s in (silent, sending):
                s.close()

    asyncio.run(run())
