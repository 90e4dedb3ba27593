"""Every mitmproxy internal the gateway uses (mitmgateway.mitm.INTERNALS) is where the gateway
expects it in the installed mitmproxy: an upgrade that moves one fails here, by name."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from mitmproxy.proxy import mode_specs
from mitmproxy.test import tutils

from mitmgateway.mitm import INTERNALS
from mitmgateway.mitm.listener_lines import PLACEHOLDER_TARGET, reverse_mode
from mitmgateway.mitm.messages import from_live_state


def resolve(spec: str) -> object:
    """``module:Name.attr`` (``Name()``: an instance made without arguments) to the object."""
    module_name, _, path = spec.partition(":")
    found: object = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part[:-2])() if part.endswith("()") else getattr(found, part)
    return found


@pytest.mark.parametrize("spec", INTERNALS)
def test_the_internal_is_where_the_gateway_expects_it(spec):
    assert resolve(spec) is not None


def test_mitmproxy_still_names_a_listener_as_the_gateway_rewrites_it():
    mode = mode_specs.ProxyMode.parse(reverse_mode("127.0.0.1", 8080))
    assert isinstance(mode, mode_specs.ReverseMode)
    assert mode.description == f"reverse proxy to {PLACEHOLDER_TARGET}"


@pytest.mark.parametrize(
    "message",
    [
        tutils.treq(headers=((b"Host", b"a.local"), (b"X-A", b"1"), (b"x-a", b"2"))),
        tutils.tresp(trailers=((b"X-T", b"t"),)),
    ],
)
def test_a_message_made_again_from_a_live_state_is_what_from_state_makes(message):
    # messages.from_live_state sets what mitmproxy's constructors would, without their checks: a
    # field mitmproxy adds to RequestData or ResponseData, or a Headers that keeps more than its
    # fields, shows up here.
    state = message.get_state()
    made, expected = from_live_state(type(message), state), type(message).from_state(dict(state))
    assert vars(made.data).keys() == vars(expected.data).keys()
    assert made.data == expected.data
    assert vars(made.headers) == vars(expected.headers)
    assert made.headers.get_all("x-a") == expected.headers.get_all("x-a")
    made.headers["X-New"] = "n"  # its own fields, not the state's
    assert b"X-New" not in dict(state["headers"])


def test_the_dispatch_table_installs_in_mitmdumps_manager_and_leaves_it_as_it_was():
    asyncio.run(_install_and_uninstall())


async def _install_and_uninstall() -> None:
    from mitmproxy import addonmanager, master, options
    from mitmproxy.proxy.layers.http import HttpRequestHook
    from mitmproxy.test import tflow

    from mitmgateway.mitm import dispatch

    class Counting:
        def __init__(self) -> None:
            self.requests = 0

        def request(self, flow) -> None:  # type: ignore[no-untyped-def]
            self.requests += 1

    dumpish = master.Master(options.Options())
    counting = Counting()
    dumpish.addons.add(counting)
    manager = dumpish.addons
    assert dispatch.install(dumpish) and type(manager) is dispatch.DispatchTable
    assert not dispatch.install(dumpish), "installed once"
    await manager.trigger_event(HttpRequestHook(tflow.tflow()))
    assert counting.requests == 1 and "request" in manager._handlers
    later = type("Later", (Counting,), {})()
    manager.add(later)  # an addon loaded later (a script reload) is found: the table was dropped
    await manager.trigger_event(HttpRequestHook(tflow.tflow()))
    assert (counting.requests, later.requests) == (2, 1)
    dispatch.uninstall(dumpish)
    assert type(manager) is addonmanager.AddonManager and not hasattr(manager, "_handlers")
    await manager.trigger_event(HttpRequestHook(tflow.tflow()))
    assert (counting.requests, later.requests) == (3, 2)


def test_mitmproxy_opens_and_lets_go_of_upstream_sockets_as_the_handover_expects():
    # mitm/sockets.py hands a parked socket over through the module's asyncio.open_connection,
    # and lets the previous handler "close" a stand-in writer: both read off mitmproxy's source.
    import inspect

    from mitmproxy.proxy import server
    from mitmproxy.proxy.layers.http import _http1

    opening = inspect.getsource(server.ConnectionHandler.open_connection)
    assert "await asyncio.open_connection(" in opening
    assert "ServerConnectHook" in opening.split("asyncio.open_connection(")[0], "the hook runs first"
    assert "await self.handle_connection(command.connection)" in opening, "in the same task"
    handling = inspect.getsource(server.ConnectionHandler.handle_connection)
    assert "writer = self.transports[connection].writer" in handling and "writer.close()" in handling
    # Between exchanges, an Http1Client is back to reading headers with nothing of either kept.
    done = inspect.getsource(_http1.Http1Connection.mark_done)
    assert "self.request = self.response = None" in done and "self.stream_id = None" in done
    assert "self.state = self.read_headers" in done


def test_mitmproxy_takes_a_tls_session_as_given_and_never_closes_one_itself():
    # mitm/sockets.py hands an established session to the next connection's TLS layer through the
    # tls_start_server hook, and finishes its handshake at once; the previous connection's layer
    # must not have ended the session (a close_notify) when its socket was taken.
    import inspect

    from mitmproxy.proxy import tunnel
    from mitmproxy.proxy.layers import tls

    assert "self.tls = tls_start.ssl_conn" in inspect.getsource(tls.TLSLayer.start_tls)
    starting = inspect.getsource(tls.ServerTLSLayer.start_handshake)
    assert 'yield from self.receive_handshake_data(b"")' in starting
    assert "self.tls.do_handshake()" in inspect.getsource(tls.TLSLayer.receive_handshake_data)
    for method in (tls.TLSLayer.send_close, tls.TLSLayer.receive_close):
        assert ".shutdown(" not in inspect.getsource(method)
    finished = inspect.getsource(tunnel.TunnelLayer._handshake_finished)
    assert "events.OpenConnectionCompleted(self.command_to_reply_to, err)" in finished


def test_asyncio_stream_readers_keep_what_a_parked_socket_is_checked_by():
    async def make() -> asyncio.StreamReader:
        return asyncio.StreamReader()

    reader = asyncio.run(make())
    assert reader._buffer == b"" and reader._waiter is None


def test_layers_made_while_the_gateway_is_loaded_queue_their_events_in_lists():
    import inspect
    import sys

    from mitmproxy import options
    from mitmproxy.proxy import layer
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import tflow

    from mitmgateway.mitm.event_queues import EventQueue, SmallEventQueues

    # collections is used at run time only to make this queue: a new use would get the list too.
    source = inspect.getsource(layer)
    assert source.count("collections.") - source.count("collections.abc") == 2  # annotation, __init__

    def new_layer() -> layer.Layer:
        return layer.NextLayer(Context(tflow.tclient_conn(), options.Options()))

    before = layer.collections  # (another test may have left the gateway's in place)
    queues = SmallEventQueues()
    queues.install()
    try:
        queue = new_layer()._paused_event_queue
        assert isinstance(queue, EventQueue) and not queue
        queue.append("a")
        queue.append("b")
        assert queue and queue.popleft() == "a" and list(queue) == ["b"]
        assert sys.getsizeof(EventQueue()) < 100
    finally:
        queues.uninstall()
    assert layer.collections is before


def test_mitmproxy_keeps_what_an_idle_client_is_set_aside_by():
    # mitm/resting_clients.py reads a handler's watchdog and pending work, its layers' pause, and
    # serves a socket again through the listener's handle_stream, as asyncio.start_server does.
    import inspect

    from mitmproxy.proxy import layer, mode_servers, server

    watchdog = inspect.getsource(server.TimeoutWatchdog)
    assert "self.last_activity = time.time()" in watchdog and "self.blocker += 1" in watchdog
    init = inspect.getsource(server.ConnectionHandler.__init__)
    assert "self.wakeup_timer = set()" in init and "self.hook_tasks = set()" in init
    client = inspect.getsource(server.ConnectionHandler.handle_client)
    assert "ClientDisconnectedHook" in client and "io.handler.cancel(" in client
    streams = inspect.signature(mode_servers.ServerInstance.handle_stream).parameters
    assert list(streams)[1:] == ["reader", "writer"]
    assert "self._paused = None" in inspect.getsource(layer.Layer.__init__)
    # The HTTP layer forgets a stream once it is done, and keeps a connection's Http1Server.
    http = inspect.getsource(importlib.import_module("mitmproxy.proxy.layers.http").HttpLayer)
    assert "self.streams.pop(" in http and "self.waiting_for_establishment" in http
