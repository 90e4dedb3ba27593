"""The mitmproxy addon: options, reverse-mode setup, config watching, and the request hooks.

The compiled config is one immutable object swapped whole on reload (a reference assignment):
each request sees the old config or the new one, never a mix, and a bad file leaves the old one
serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import weakref
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from .access_log import AccessLog, StreamedBytes
from .admin import AdminServer
from .answers import (
    BAD_GATEWAY,
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL_ERROR,
    NOT_FOUND,
    ProxyErrorAnswers,
    as_json_error,
    closing_answer_to,
    make_answer,
)
from .config import ConfigError, GatewayConfig, HttpListener, load_config
from .config.loader import STREAM_BODIES_OVER, RequestLimits
from .decision_view import DecisionView, why
from .front_door import Refusal, admit
from .headers import declared_length, remove_headers
from .https import CertificateFiles, HttpsListener, refusing_connection
from .listener_lines import ListenerLines, reverse_mode
from .metrics import GatewayMetrics
from .pipeline import RequestContext
from .policies import StepState
from .request_limits import RequestLimitGuards, refusal
from .routing import hostname_of
from .tracing import ensure_traceparent
from .trailers import TrailerFields
from .upgrades import RefusedSwitches, switch_forwarded
from .upstream_health import UpstreamTarget
from .upstream_tls import system_ca_bundle

logger = logging.getLogger("mitmgateway")

CONFIG_POLL_SECONDS = 0.2
NO_CONFIG = "The gateway has no valid configuration."
LIMITS = "limits"
"""What answered a request over `limits`, in flow records, metrics and the access log."""
PLAIN_HTTP_ON_HTTPS_PORT = "This port speaks HTTPS."
REQUEST_TRAILERS = "Request trailer fields are not supported"
SWITCH_REFUSED = "upstream switched protocols"
REJECTED_MARKER = ":no_entry:"
ANSWERED_MARKER = ":zap:"
POOL_DIR_ENV = "MITMGATEWAY_POOL_DIR"
"""Set by `mitmgateway run --workers N` in its workers: the pool serves the admin port, and a
worker tells it that it is ready by a file in this folder."""


def _request_streams(request: http.Request, limits: RequestLimits) -> bool:
    """Whether a request body passes through as it comes rather than being held in memory
    (unless a step needs the whole body): a large one, or a chunked one."""
    length = declared_length(request)
    if length is not None:
        return length > limits.stream_bodies_over
    # With a body size limit, a chunked body is measured by holding it (up to the held limit).
    # An HTTP/2 body without Content-Length is held too: mitmproxy would stream it to an HTTP/1
    # upstream with no framing at all (see `request`).
    return "chunked" in request.headers.get("transfer-encoding", "").lower() and not limits.max_body_bytes


def _response_streams(response: http.Response) -> bool:
    # Without a Content-Length, a response is chunked or read to its connection's end.
    length = declared_length(response)
    return length is None or length > STREAM_BODIES_OVER


def _refuse_body_if_answered(flow: http.HTTPFlow) -> None:
    if flow.response is not None:
        # Answered before its body: mitmproxy would still invite an `Expect: 100-continue` client
        # to send it (and then drop it, see request_limits.py), so the expectation goes.
        flow.request.headers.pop("expect", None)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Gateway:
    """Routes each request to its pipeline and runs it; reloads gateway.config.yml on change."""

    def __init__(self) -> None:
        self.config: GatewayConfig | None = None
        self.config_file: Path | None = None
        self.state = StepState()
        self._config_signature: tuple[object, ...] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._error_answers = ProxyErrorAnswers()
        self._request_limit_guards = RequestLimitGuards(self._error_answers.render, self._refuse_over_limit)
        self._trailer_fields = TrailerFields(self._error_answers.render)
        self._refused_switches = RefusedSwitches()
        self._listener_lines = ListenerLines()
        self._decision_view = DecisionView()
        self._contexts: weakref.WeakKeyDictionary[http.HTTPFlow, RequestContext] = weakref.WeakKeyDictionary()
        # The upstream each client connection is about to connect to, for the server_* hooks,
        # which see connections rather than flows; an entry lasts as long as its request.
        self._targets: weakref.WeakValueDictionary[tuple[str, tuple[str, int]], UpstreamTarget] = (
            weakref.WeakValueDictionary()
        )
        self.metrics = GatewayMetrics()
        self.access_log = AccessLog()
        self.accepting = True
        self.admin = AdminServer(
            ready=lambda: self.config is not None and self.accepting, metrics=self.metrics.exposition
        )
        pool_dir = os.environ.get(POOL_DIR_ENV)
        self._ready_file = Path(pool_dir) / f"ready-{os.getpid()}" if pool_dir else None
        self._running = False
        self._certificate_files = CertificateFiles()
        self._https_mode: str | None = None
        """The mode spec of the https listener: flows and connections name the one they came in on."""

    def load(self, loader) -> None:
        self._error_answers.install()
        self._request_limit_guards.install()
        self._trailer_fields.install()
        self._refused_switches.install()
        self._listener_lines.install()
        self._decision_view.install()
        loader.add_option(
            "gateway_config",
            str,
            "gateway.config.yml",
            "The gateway's config file (Express Gateway's gateway.config.yml format, YAML or JSON).",
        )

    def configure(self, updated: set[str]) -> None:
        if "ssl_insecure" in updated and ctx.options.ssl_insecure:
            raise exceptions.OptionsError(
                "ssl_insecure would accept any upstream certificate: the gateway refuses it; "
                "trust a private CA with proxyOptions.target.caFile in the serviceEndpoint"
            )
        if "gateway_config" in updated:
            path = Path(ctx.options.gateway_config).expanduser().absolute()
            try:
                self._load(path)
                self.config_file = path
                assert self.config is not None
                logger.info("serving %s: %s", path, self.config.summary)
            except ConfigError as e:
                if self.config is not None:
                    # A change of the option at run time is refused and rolled back.
                    raise exceptions.OptionsError(f"invalid gateway config: {e}") from None
                # At startup one clear line is enough: mitmproxy exits on errors logged then.
                # Nothing listens meanwhile (mitmproxy would otherwise open its default proxy
                # port and say so just before exiting); a host that keeps running (no error
                # check) listens once the file is fixed.
                logger.error("invalid gateway config: %s", e)
                self.config_file = path
                ctx.options.update(mode=[])

    def _load(self, path: Path) -> None:
        """Load `path` and swap it in (a ConfigError leaves the config in service as it is)."""
        first = _file_signature(path)
        try:
            self._swap(load_config(path, self.state))
        finally:
            # The config file as it was before loading (an edit meanwhile is seen next poll), and
            # the files the config in service was read from as they are now.
            self._config_signature = (first, *self._signature(path)[1:])

    def _signature(self, config_file: Path) -> tuple[object, ...]:
        """The state of the config file (first) and of every other file the config was read from."""
        others = self.config.watched_files[1:] if self.config is not None else ()
        return (_file_signature(config_file), *(_file_signature(f) for f in others))

    def running(self) -> None:
        self._running = True
        self._announce_ready()
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_config())

    def _announce_ready(self) -> None:
        if self._ready_file is not None and self._running and self.config is not None and self.accepting:
            self._ready_file.touch()

    def stop_accepting(self) -> None:
        """Shutting down: /ready (and the pool) must stop sending traffic here."""
        self.accepting = False
        if self._ready_file is not None:
            self._ready_file.unlink(missing_ok=True)

    def done(self) -> None:
        if self._ready_file is not None:
            self._ready_file.unlink(missing_ok=True)
        self.admin.stop()
        self.access_log.close()
        self.state.keep_only(set())  # a code reload starts afresh: release what the old code held
        self._error_answers.uninstall()
        self._request_limit_guards.uninstall()
        self._trailer_fields.uninstall()
        self._refused_switches.uninstall()
        self._listener_lines.uninstall()
        self._decision_view.uninstall()
        # mitmproxy holds the certificates in memory; the next instance writes its own files.
        self._certificate_files.remove_all()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _swap(self, config: GatewayConfig) -> None:
        previous = self.config
        self.config = config
        self.state.keep_only(set(config.used_state))
        if previous is None:
            self._trust_system_cas()
        if previous is None or (previous.http, previous.https) != (config.http, config.https):
            self._listen(config.http, config.https)
        self.access_log.configure(config.access_log)
        self._error_answers.json_errors = config.json_errors
        self._request_limit_guards.limits = config.limits
        if self._ready_file is None:
            admin = config.admin
            self.admin.configure((admin.address, admin.port) if admin else None)
        self._announce_ready()

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

    def _listen(self, listener: HttpListener | None, https: HttpsListener | None) -> None:
        # Both listeners are the same reverse mode: mitmproxy terminates TLS wherever a client
        # starts with a ClientHello, and tls_start_client refuses it on the http port.
        modes = [reverse_mode(x.hostname, x.port) for x in (listener, https) if x is not None]
        ctx.options.update(
            mode=modes,
            # Choose the upstream per request (lazy), and route by the Host the client sent.
            connection_strategy="lazy",
            keep_host_header=True,
            # No raw TCP tunnels, whatever an upstream answers (a 101 the gateway did not
            # forward is refused in responseheaders; this holds should one slip past).
            rawtcp=False,
            # mitmproxy's own smuggling checks (Content-Length/Transfer-Encoding, header names,
            # HTTP/2's :authority and connection headers), which the front door builds on.
            validate_inbound_headers=True,
        )
        had_https = self._https_mode is not None
        self._https_mode = modes[-1] if https is not None else None
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
        https = self.config.https if self.config is not None else None
        if https is None or client.proxy_mode.full_spec != self._https_mode:
            reason = "TLS on the plain http port"
        elif not https.serves(client.sni, client.sockname[0]):
            reason = f"https.tls has no certificate for {client.sni or 'a client without SNI'} and no default"
        else:
            return
        logger.warning("TLS handshake from %s refused: %s", client.peername[0], reason)
        data.ssl_conn = refusing_connection()

    def tls_start_server(self, data: tls.TlsData) -> None:
        """An upstream with its own caFile: mitmproxy's TLS settings (SNI, name check, ALPN,
        versions), with that CA store instead of certifi's."""
        trust = self.config.upstream_trust.context_for(data.conn.address) if self.config else None
        if trust is None or data.is_dtls:
            return
        if data.ssl_conn is None:
            # This addon runs before mitmproxy's TlsConfig: let it build the connection now (it
            # then leaves the connection alone).
            tlsconfig = ctx.master.addons.get("tlsconfig")
            if tlsconfig is None:
                return
            tlsconfig.tls_start_server(data)
        # The verify store is the context's; what mitmproxy set on the connection itself (the
        # name to check, SNI, ALPN, verify mode) stays.
        data.ssl_conn.set_context(trust)

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            if self.config_file is None:
                continue
            signature = self._signature(self.config_file)
            if signature[0] is None or signature == self._config_signature:
                continue
            changed = self._changed_files(signature)
            try:
                self._load(self.config_file)
            except ConfigError as e:
                self.metrics.config_reloaded(False)
                logger.error("config change refused, still serving the last good config: %s", e)
                continue
            self.metrics.config_reloaded(True)
            logger.info("config reloaded: %s changed", ", ".join(map(str, changed)))

    def _changed_files(self, signature: tuple[object, ...]) -> list[Path]:
        """The files whose change `signature` shows (config file first), for the reload's log line."""
        assert self.config_file is not None
        files = (self.config_file, *(self.config.watched_files[1:] if self.config is not None else ()))
        before = self._config_signature or ()
        changed = [f for i, f in enumerate(files) if i >= len(before) or before[i] != signature[i]]
        return changed or [self.config_file]

    def client_connected(self, client: connection.Client) -> None:
        self._request_limit_guards.client_connected(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self._request_limit_guards.request_started(client.id)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        self._request_limit_guards.request_started(flow.client_conn.id)
        config = self.config
        if config is None:
            flow.response = make_answer(flow.request, 503, NO_CONFIG)
            self._record(flow, answered_by="no config")
            return None
        try:
            pending = self._handle(flow, config)
        except Exception:
            self._fail_closed(flow)
            pending = None
        if pending is not None:
            # Only a step that waits (a shared rate-limit store) makes mitmproxy await this hook.
            return self._finish_later(flow, pending)
        _refuse_body_if_answered(flow)
        return None

    def _refuse_over_limit(self, flow: http.HTTPFlow, status: int, message: str) -> None:
        """Answer a request over `limits` (its head here, or its body as it comes) and close."""
        flow.response = closing_answer_to(flow, status, message)
        record = flow.metadata.get("gateway", {})
        self._record(flow, LIMITS, record.get("apiEndpoint"), record.get("pipeline"))

    def _fail_closed(self, flow: http.HTTPFlow) -> None:
        # A request the gateway could not judge never reaches an upstream.
        # Without the query string: it may carry a credential.
        request = flow.request
        logger.exception(
            "gateway error on %s %s%s", request.method, request.host_header, request.path.partition("?")[0]
        )
        flow.response = make_answer(flow.request, 500, INTERNAL_ERROR)
        self._record(flow, answered_by="gateway error")

    def _handle(self, flow: http.HTTPFlow, config: GatewayConfig) -> Coroutine[Any, Any, None] | None:
        request = flow.request
        origin = flow.metadata.get("gateway", {}).get("origin")
        if flow.is_replay == "request" and origin:
            # A replayed flow carries the upstream's Host and path: route it as first sent.
            # (Flows recorded before the front door kept only the path.)
            target = origin.get("target", origin.get("path", request.path))
            request.host_header = origin["host"]
            request.data.path = target.encode("utf-8", "surrogateescape")
        client = config.clients.identify(flow)
        record = flow.metadata["gateway"] = {
            "origin": {"host": request.host_header or "", "target": request.path},
            "client": client.ip,
            "traceparent": ensure_traceparent(request),
        }
        if config.json_errors:
            record["jsonErrors"] = True
        if not flow.client_conn.tls and flow.client_conn.proxy_mode.full_spec == self._https_mode:
            # A plain HTTP request on the https port: answered, not served (nginx does the same).
            flow.response = make_answer(request, 400, PLAIN_HTTP_ON_HTTPS_PORT, {"Connection": "close"})
            self._record(flow, answered_by="plain HTTP on the https port")
            return None
        if (too_large := refusal(config.limits, request)) is not None:
            self._refuse_over_limit(flow, *too_large)
            return None
        try:
            admitted = admit(request, config.path_rules)
        except Refusal as e:
            # Malformed or ambiguous: nothing after it on this connection can be trusted either.
            flow.response = closing_answer_to(flow, 400, BAD_REQUEST)
            self._record(flow, answered_by=e.reason)
            return None
        record["origin"].update(host=admitted.host, path=request.path, target=admitted.raw_target)
        if admitted.websocket:
            record["upgrade"] = "websocket"
        hostname = hostname_of(admitted.host)
        route = config.router.match(hostname, request.path, request.method)
        if route is None:
            flow.response = make_answer(request, 404, NOT_FOUND)
            self._record(flow, answered_by="no apiEndpoint")
            return None
        context = RequestContext(flow, route, hostname, client, record)
        if route.pipeline.identity_headers:
            remove_headers(request, route.pipeline.identity_headers)
        answered_by = route.pipeline.run(context)
        if answered_by is not None and not isinstance(answered_by, str):
            return self._conclude_when_run(context, answered_by, config.limits)
        self._conclude(context, answered_by, config.limits)
        return None

    async def _conclude_when_run(
        self, context: RequestContext, running: Coroutine[Any, Any, str | None], limits: RequestLimits
    ) -> None:
        self._conclude(context, await running, limits)

    async def _finish_later(self, flow: http.HTTPFlow, pending: Coroutine[Any, Any, None]) -> None:
        try:
            await pending
        except Exception:
            self._fail_closed(flow)
        _refuse_body_if_answered(flow)

    def _conclude(self, context: RequestContext, answered_by: str | None, limits: RequestLimits) -> None:
        flow, route = context.flow, context.route
        if answered_by is None and not context.routed:
            # Like Express Gateway, a pipeline that neither answers nor proxies falls through to 404.
            context.answer(make_answer(flow.request, 404, NOT_FOUND))
            answered_by = "no proxy step"
        elif (
            route.api_endpoint.scopes
            and "consumer" not in context.record
            and (answered_by is None or context.record.get("served"))
        ):
            # Scopes need a consumer: a step that was skipped or let anonymous requests through
            # must not open a scoped endpoint.
            context.answer(make_answer(flow.request, 403, FORBIDDEN))
            answered_by = "scopes without a consumer"
        self._contexts[flow] = context
        if context.target is not None and answered_by is None:
            self._expect_connection(flow.client_conn.id, context.target)
        if answered_by is None and not context.wants_request_body and _request_streams(flow.request, limits):
            flow.request.stream = True
        self._record(flow, answered_by, route.api_endpoint_name, route.pipeline.name, context)

    def _record(
        self,
        flow: http.HTTPFlow,
        answered_by: str | None,
        api_endpoint: str | None = None,
        pipeline: str | None = None,
        context: RequestContext | None = None,
    ) -> None:
        """What mitmweb shows: metadata for tools, a comment and a marker for people."""
        decision = flow.metadata.setdefault("gateway", {})
        decision.update(apiEndpoint=api_endpoint, pipeline=pipeline, answeredBy=answered_by)
        if context is not None and context.user is not None:
            decision["user"] = dict(context.user)
        where = f"apiEndpoint {api_endpoint} → pipeline {pipeline}" if pipeline else "no apiEndpoint matched"
        # A refusal the gateway made itself (content it served, a cached 404, is not one).
        refused = (
            answered_by is not None
            and not decision.get("served")
            and flow.response is not None
            and flow.response.status_code >= 400
        )
        if refused and decision.get("jsonErrors"):
            flow.response = as_json_error(flow.response, self._request_id(flow))  # type: ignore[arg-type]
        origin = decision.get("origin", {})
        if "path" in origin and origin["target"] != origin["path"]:
            where += f"; target {origin['target']!r} read as {origin['path']!r}"
        if answered_by:
            # The request never got an upstream: show it under the host the client asked for
            # rather than reverse mode's placeholder target.
            flow.request.data.host = hostname_of(flow.request.host_header or "") or flow.request.host
            status = flow.response.status_code if flow.response else ""
            reason = why(decision)
            flow.comment = f"gateway: {where}; answered {status} by {answered_by}" + (
                f" ({reason})" if reason else ""
            )
            # Refusals are marked; the gateway's other answers (a cache hit, a CORS preflight) too,
            # differently.
            flow.marked = REJECTED_MARKER if refused else ANSWERED_MARKER
        else:
            # mitmweb lists a proxied flow under its upstream: the comment keeps the client's view.
            asked = f"{origin.get('host', '')}{origin.get('path', '')}"
            flow.comment = f"gateway: {where}; {asked} proxied to {flow.request.host}:{flow.request.port}"

    @staticmethod
    def _request_id(flow: http.HTTPFlow) -> str:
        """The request's id for an error body: the one the proxy step kept or made, or a new one."""
        record = flow.metadata.get("gateway", {})
        if "requestId" not in record:
            record["requestId"] = secrets.token_hex(16)
        return record["requestId"]

    def _expect_connection(self, client_id: str, target: UpstreamTarget) -> None:
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

    def request(self, flow: http.HTTPFlow) -> None:
        context = self._contexts.get(flow)
        if context is None or flow.response is not None:
            return
        request = flow.request
        if request.trailers and not request.stream:
            # HTTP/2 request trailers: an HTTP/1 upstream cannot take them after a Content-Length
            # body (and mitmproxy's HTTP/1 sender fails on them), so nothing is forwarded.
            del self._contexts[flow]
            context.finished()
            flow.response = closing_answer_to(flow, 400, REQUEST_TRAILERS)
            route = context.route
            self._record(flow, "request trailers", route.api_endpoint_name, route.pipeline.name)
            return
        context.forwarded()
        if request.is_http2 and request.raw_content and "content-length" not in request.headers:
            # HTTP/2 frames its body itself; mitmproxy sends it on to an HTTP/1 upstream as is,
            # which could not tell where it ends.
            request.headers["content-length"] = str(len(request.raw_content))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and response.status_code == 101 and not switch_forwarded(flow):
            # A switch the gateway did not forward (it removed the Upgrade): taking it would make
            # the connection a raw tunnel to the upstream that no policy judges. (Checked for
            # every flow, also one sent by the code before a reload.)
            self._refuse_switch(flow)
            return
        context = self._contexts.get(flow)
        if context is None:
            return
        if not context.wants_body:
            del self._contexts[flow]
            if flow.response is not None and _response_streams(flow.response):
                # A streamed body is never kept: the access log counts its bytes as they pass.
                flow.response.stream = StreamedBytes(context.record) if self.access_log.enabled else True
        if flow.response is not None:
            context.responded(flow.response)

    def _refuse_switch(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        record = flow.metadata.setdefault("gateway", {})
        logger.warning("upstream %s switched protocols unasked: answered 502", record.get("upstream"))
        if (context := self._contexts.pop(flow, None)) is not None:
            context.finished()
        self._refused_switches.refuse(flow.response)
        record["upstreamSwitchedProtocols"] = True
        flow.response = closing_answer_to(flow, 502, BAD_GATEWAY)
        self._record(flow, SWITCH_REFUSED, record.get("apiEndpoint"), record.get("pipeline"))

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("gateway", {}).get("upstreamSwitchedProtocols"):
            # mitmproxy went on to read the 101's (empty) body into the answer that replaced it.
            flow.response = closing_answer_to(flow, 502, BAD_GATEWAY)
        context = self._contexts.pop(flow, None)
        if context is not None and flow.response is not None:
            context.body_ready(flow.response)
        self._observe(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        context = self._contexts.pop(flow, None)
        if context is not None:
            context.finished()
        self._observe(flow)

    def _observe(self, flow: http.HTTPFlow) -> None:
        record = flow.metadata.get("gateway")
        if record is None or not flow.live:
            return
        self.metrics.observe(flow, record)
        if self.access_log.enabled:
            self.access_log.write(flow, record)
