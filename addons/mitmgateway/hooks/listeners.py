"""Listeners and TLS: mitmproxy put in reverse mode on the config's http and https ports, the
gateway's certificates on the https one, and a CA of the config's for upstreams that name one."""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx, exceptions, tls

from ..client_certificates import ClientCertificates, ask_for_certificate, resumed
from ..config.model import GatewayConfig, HttpListener
from ..https import CertificateFiles, HttpsListener, refusing_connection
from ..mitm.listener_lines import ListenerLines, reverse_mode
from ..mitm.tlsconfig import make_client_connection, make_server_connection
from ..upstreams.tls import system_ca_bundle
from .config_service import CurrentConfig

logger = logging.getLogger("mitmgateway")


def on_https_port(client: connection.Client, https: HttpsListener | None) -> bool:
    """Whether `client` came in on the https listener (each listener is a mode of its own)."""
    mode = client.proxy_mode
    return https is not None and (mode.custom_listen_host, mode.custom_listen_port) == (
        https.hostname or None,
        https.port,
    )


class Listeners:
    def __init__(self, current: CurrentConfig, client_certificates: ClientCertificates) -> None:
        self.current = current
        self.client_certificates = client_certificates
        """What each client connection's certificate was found to be (with https.options.requestCert)."""
        self._listener_lines = ListenerLines()
        self._certificate_files = CertificateFiles()

    def load(self, loader) -> None:
        self._listener_lines.install()

    def configure(self, updated: set[str]) -> None:
        if "ssl_insecure" in updated and ctx.options.ssl_insecure:
            raise exceptions.OptionsError(
                "ssl_insecure would accept any upstream certificate: the gateway refuses it; "
                "trust a private CA with proxyOptions.target.caFile in the serviceEndpoint"
            )

    def done(self) -> None:
        self._listener_lines.uninstall()
        # mitmproxy holds the certificates in memory; the next instance writes its own files.
        self._certificate_files.remove_all()

    def apply(self, config: GatewayConfig, previous: GatewayConfig | None) -> None:
        if previous is None:
            self._trust_system_cas()
        if previous is None or (previous.http, previous.https) != (config.http, config.https):
            self._listen(
                config.http, config.https, had_https=previous is not None and previous.https is not None
            )

    def _trust_system_cas(self) -> None:
        options = ctx.options
        if "ssl_verify_upstream_trusted_ca" not in options or options.ssl_verify_upstream_trusted_ca:
            return
        if options.ssl_verify_upstream_trusted_confdir:
            return  # the operator chose the CAs
        bundle = system_ca_bundle()
        if bundle is None:
            logger.info("no system CA bundle found: HTTPS upstreams are checked against certifi's")
        else:
            options.update(ssl_verify_upstream_trusted_ca=bundle)

    def _listen(self, listener: HttpListener | None, https: HttpsListener | None, had_https: bool) -> None:
        # Both listeners are the same reverse mode: mitmproxy terminates TLS wherever a client
        # starts with a ClientHello, and tls_start_client refuses it on the http port.
        modes = [reverse_mode(x.hostname, x.port) for x in (listener, https) if x is not None]
        ctx.options.update(
            mode=modes,
            # Choose the upstream per request (lazy), and route by the Host the client sent.
            connection_strategy="lazy",
            keep_host_header=True,
            # No raw TCP tunnels, whatever an upstream answers (a 101 the gateway did not
            # forward is refused by the response side; this holds should one slip past).
            rawtcp=False,
            # mitmproxy's own smuggling checks (Content-Length/Transfer-Encoding, header names,
            # HTTP/2's :authority and connection headers), which the front door builds on.
            validate_inbound_headers=True,
        )
        if https is not None or had_https:
            # mitmproxy reloads its certificate store whenever `certs` changes: new connections
            # get the new certificates, those already open keep theirs.
            ctx.options.update(certs=self._certificate_files.specs(https.certificates if https else ()))
            self._certificate_files.forget_stale()
        if "block_global" in ctx.options:
            # mitmdump refuses clients with public addresses by default, a guard for open
            # forward proxies; a gateway exists to serve them.
            ctx.options.update(block_global=False)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        if client.sni:
            # Host names are case-insensitive; mitmproxy's certificate lookup is not.
            client.sni = client.sni.lower()

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Refuse the handshake rather than let a client get a certificate minted by mitmproxy's
        CA: on the plain http port, and on the https port for a name no certificate covers (when
        the config has no default). The client sees a handshake_failure alert.

        The gateway's addons run before mitmproxy's TlsConfig (under mitmdump and the lean runner
        alike), which leaves a connection provided here alone."""
        if data.is_dtls:
            return
        client = data.context.client
        config = self.current.config
        https = config.https if config is not None else None
        if https is None or not on_https_port(client, https):
            reason = "TLS on the plain http port"
        elif not https.serves(client.sni, client.sockname[0]):
            reason = f"https.tls has no certificate for {client.sni or 'a client without SNI'} and no default"
        elif https.client_auth is None:
            return
        elif make_client_connection(data):
            assert data.ssl_conn is not None
            ask_for_certificate(data.ssl_conn, client, https.client_auth, self.client_certificates)
            return
        else:
            reason = "client certificates are asked for, and mitmproxy's TLS settings are not loaded"
        logger.warning("TLS handshake from %s refused: %s", client.peername[0], reason)
        data.ssl_conn = refusing_connection()

    def tls_established_client(self, data: tls.TlsData) -> None:
        config = self.current.config
        https = config.https if config is not None else None
        if https is not None and https.client_auth is not None and data.ssl_conn is not None:
            resumed(data.ssl_conn, data.context.client, https.client_auth, self.client_certificates)

    def tls_start_server(self, data: tls.TlsData) -> None:
        """An upstream with its own caFile: mitmproxy's TLS settings (SNI, name check, ALPN,
        versions), with that CA store instead of certifi's."""
        config = self.current.config
        trust = config.upstream_trust.context_for(data.conn.address) if config else None
        if trust is None or data.is_dtls:
            return
        if data.ssl_conn is None and not make_server_connection(data):
            return
        # The verify store is the context's; what mitmproxy set on the connection itself (the
        # name to check, SNI, ALPN, verify mode) stays.
        data.ssl_conn.set_context(trust)
