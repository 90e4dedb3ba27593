"""Running the Gateway addon under mitmproxy's own test helpers (taddons, tflow)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from mitmgateway.config.model import GatewayConfig
from mitmgateway.hooks import gateway_addons
from mitmgateway.hooks.config_service import ConfigService
from mitmgateway.hooks.gate import RequestGate


class Gateway:
    """The gateway's addons (`gateway_addons()`), as mitmproxy's test context runs them: the
    hooks a unit test calls go to every addon that has them, in their order."""

    def __init__(self) -> None:
        self.addons = gateway_addons()
        self.config_service = next(a for a in self.addons if isinstance(a, ConfigService))
        self.gate = next(a for a in self.addons if isinstance(a, RequestGate))

    @property
    def config(self) -> GatewayConfig | None:
        return self.config_service.current.config

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """The gate's hook: what it returns when a step waits (the test then awaits it)."""
        return self.gate.requestheaders(flow)

    def _each(self, hook: str, *args: Any) -> None:
        for addon in self.addons:
            if (handler := getattr(addon, hook, None)) is not None:
                handler(*args)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._each("responseheaders", flow)

    def done(self) -> None:
        self._each("done")

    def reload(self) -> None:
        """Load the config file again, as the config service does when it changes."""
        service = self.config_service
        assert service.config_file is not None
        service._load(service.config_file)


@contextlib.contextmanager
def gateway_context() -> Iterator[tuple[Gateway, taddons.context]]:
    gateway = Gateway()
    # Proxyserver declares the options the gateway sets (mode, connection_strategy...).
    with taddons.context(Proxyserver(), *gateway.addons) as tctx:
        yield gateway, tctx


@contextlib.contextmanager
def running_gateway(config_file: Path) -> Iterator[Gateway]:
    with gateway_context() as (gateway, tctx):
        tctx.options.update(gateway_config=str(config_file))
        assert gateway.config is not None, "the test config did not load"
        yield gateway


def gateway_for(directory: Path, config_text: str) -> contextlib.AbstractContextManager[Gateway]:
    """`running_gateway` on `config_text`, written to gateway.config.yml in `directory`."""
    path = directory / "gateway.config.yml"
    path.write_text(config_text)
    return running_gateway(path)


def make_flow(
    host: str = "api.local",
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    peer: str = "192.0.2.10",
) -> http.HTTPFlow:
    """A flow as reverse mode hands it to the hooks: addressed to the placeholder target."""
    request = tutils.treq(
        host="routed-by-pipelines.invalid", port=80, path=path.encode(), method=method.encode()
    )
    request.headers.clear()
    request.headers["Host"] = host
    for name, value in (headers or {}).items():
        request.headers.add(name, value)
    request.content = b""
    # Arriving now (tutils' requests arrive in 2000): tokens and windows are judged by it.
    request.timestamp_start = time.time()
    flow = tflow.tflow(req=request)
    flow.client_conn.peername = (peer, 50000)
    return flow


def upstream_response(flow: http.HTTPFlow, gateway: Gateway, headers: dict[str, str] | None = None) -> None:
    """Let the upstream answer 200, and run the gateway's response hook."""
    flow.response = http.Response.make(200, b"ok", headers or {})
    gateway.responseheaders(flow)


def status_of(flow: http.HTTPFlow) -> int:
    """The status the client gets so far: the gateway's own answer, or 200 for a flow the
    pipeline let through (standing in for the upstream's)."""
    return flow.response.status_code if flow.response else 200


def request_status(gateway: Gateway, flow: http.HTTPFlow) -> int:
    """Run the request hook on `flow`, for steps that decide at once; the status it leads to."""
    pending = gateway.requestheaders(flow)
    # A step that awaits (a store, a JWKS fetch) needs an event loop: such a test awaits itself.
    assert pending is None, "a step awaited: run the request hook on an event loop"
    return status_of(flow)
