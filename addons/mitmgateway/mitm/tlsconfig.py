"""mitmproxy's TLS settings for an upstream connection, made before its own addon makes them.

Written against mitmproxy 11.0's ``addons/tlsconfig.py``: ``TlsConfig.tls_start_server`` builds
the OpenSSL connection (SNI, name check, ALPN, versions) and leaves one already made alone. The
gateway's addons run before it; to change only the CA store of that connection (an upstream's
own caFile), the gateway has it made first and then swaps the store.
"""

from __future__ import annotations

from mitmproxy import ctx, tls


def make_client_connection(data: tls.TlsData) -> bool:
    """Let mitmproxy's TlsConfig make the client-side `data.ssl_conn` now (its certificate by SNI,
    ALPN, versions); False if it is not loaded."""
    tlsconfig = ctx.master.addons.get("tlsconfig")
    if tlsconfig is None:
        return False
    tlsconfig.tls_start_client(data)
    return True


def make_server_connection(data: tls.TlsData) -> bool:
    """Let mitmproxy's TlsConfig make `data.ssl_conn` now; False if it is not loaded."""
    tlsconfig = ctx.master.addons.get("tlsconfig")
    if tlsconfig is None:
        return False
    tlsconfig.tls_start_server(data)
    return True
