"""Everything of the gateway that reaches into mitmproxy's internals, in one place.

Written against mitmproxy 11.0.2. Each module says which of mitmproxy's functions it replaces or
uses, and why no public API does: its error page (error_pages), the HTTP/1 head reader and body
buffering (http1_limits), trailer fields (trailers), a 101 that would become a pipe (upgrades),
events fed to a connection (injection), the proxy server's handlers and listeners (proxyserver),
script reloading (scripts), the lean runner's event dispatch (dispatch), its TLS settings for an
upstream connection (tlsconfig), a message made again from a state it took without its
checks (messages), the words of its listener log lines (listener_lines), upstream sockets
passed from one client connection to another, with their TLS sessions (sockets), idle client
connections held as a bare socket (resting_clients), and its layers' event queues (event_queues).
Replacements go through `patches.Patches`, which restores the originals when the gateway is
unloaded and runs without a replacement (saying so) when its target is gone.

`INTERNALS` lists every such name; tests/unit/test_mitm_internals.py finds each of them in the
installed mitmproxy, so an upgrade that moves one fails there, by name, not in front of a user.
"""

INTERNALS = (
    # error_pages
    "mitmproxy.proxy.layers.http._http1:make_error_response",
    "mitmproxy.proxy.layers.http._http2:format_error",
    # http1_limits
    "mitmproxy.proxy.layers.http._http1:Http1Server.read_headers",
    "mitmproxy.proxy.layers.http._http1:Http1Server._handle_event",
    "mitmproxy.proxy.layers.http:HttpStream.state_consume_request_body",
    # trailers
    "mitmproxy.proxy.layers.http._http1:Http1Connection.read_body",
    "mitmproxy.proxy.layers.http._http1:Http1Client.send",
    "mitmproxy.proxy.layers.http._base:ReceiveHttp",
    "mitmproxy.proxy.layers.http._events:RequestTrailers",
    "mitmproxy.proxy.layers.http._events:ResponseProtocolError",
    # upgrades
    "mitmproxy.proxy.layers.http._http1:should_make_pipe",
    # injection, proxyserver
    "mitmproxy.addons.proxyserver:Proxyserver().connections",
    "mitmproxy.addons.proxyserver:Proxyserver().servers.update",
    "mitmproxy.proxy.server:ConnectionHandler.server_event",
    "mitmproxy.proxy.server:ConnectionHandler.on_timeout",
    "mitmproxy.proxy.server:ConnectionHandler.close_connection",
    # scripts
    "mitmproxy.addons.script:ScriptLoader().addons",
    "mitmproxy.addons.script:Script.loadscript",
    # dispatch
    "mitmproxy.addonmanager:AddonManager._iter_hooks",
    "mitmproxy.addonmanager:AddonManager.invoke_addon_sync",
    "mitmproxy.addonmanager:AddonManager.handle_lifecycle",
    # tlsconfig
    "mitmproxy.addons.tlsconfig:TlsConfig.tls_start_server",
    # messages
    "mitmproxy.http:RequestData",
    "mitmproxy.http:ResponseData",
    "mitmproxy.http:Headers",
    # listener_lines: the words of ReverseMode.description, checked by the test itself
    "mitmproxy.proxy.mode_specs:ReverseMode.description",
    # sockets (and what the test itself reads of the methods' source)
    "mitmproxy.proxy.server:asyncio.open_connection",
    "mitmproxy.proxy.server:ConnectionHandler.open_connection",
    "mitmproxy.proxy.server:ConnectionHandler.handle_connection",
    "mitmproxy.proxy.layers.http:HttpLayer",
    "mitmproxy.proxy.layers.http:HttpClient",
    "mitmproxy.proxy.layers.http._http1:Http1Client.read_headers",
    "mitmproxy.proxy.layers.http._http1:Http1Connection.mark_done",
    "mitmproxy.proxy.layers.tls:ServerTLSLayer.start_handshake",
    "mitmproxy.proxy.layers.tls:TLSLayer.start_tls",
    "mitmproxy.proxy.layers.tls:TLSLayer.receive_close",
    "mitmproxy.proxy.layers.tls:TLSLayer.send_close",
    "mitmproxy.proxy.tunnel:TunnelLayer._handshake_finished",
    "mitmproxy.proxy.tunnel:TunnelState.OPEN",
    # resting_clients (and what the test itself reads of the methods' source)
    "mitmproxy.proxy.server:TCP_TIMEOUT",
    "mitmproxy.proxy.server:TimeoutWatchdog.register_activity",
    "mitmproxy.proxy.server:TimeoutWatchdog.disarm",
    "mitmproxy.proxy.server:ConnectionHandler.handle_client",
    "mitmproxy.proxy.mode_servers:ServerInstance.handle_stream",
    "mitmproxy.addons.proxyserver:Proxyserver().servers.__getitem__",
    "mitmproxy.proxy.layers.http._http1:Http1Server",
    "mitmproxy.proxy.layer:Layer._handle_event",
    # event_queues
    "mitmproxy.proxy.layer:collections.deque",
    "mitmproxy.proxy.layer:Layer.__init__",
)
