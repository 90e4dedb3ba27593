"""The gateway's addons, composed in one place as mitmproxy's ``default_addons()`` composes its
own; `addons/gateway.py` (under mitmdump and mitmweb) and the lean runner both load this list.

In mitmproxy's calling order:

- `LeanDispatch`: under mitmdump and mitmweb, every event's handlers looked up once, as the lean
  runner does (mitmproxy's manager walks all its addons for each event of each flow);
- `Listeners`: reverse mode on the config's ports, its certificates, the ``tls_*`` hooks (first:
  it refuses options that would weaken TLS before any config is served);
- `ConfigService`: gateway.config.yml loaded, watched and swapped whole (`CurrentConfig`);
- `RecordingTap`: with ``gateway_record`` or ``gateway_shadow``, what the client sent and the
  upstream answered;
- `Tracing`: with ``tracing``, each request's trace ids chosen as it comes in (before the gate,
  which then keeps the traceparent it set) and its spans exported once it has ended;
- `RequestGate`: each request admitted or refused, routed, run through its pipeline;
- `UpstreamConnections`: the connection to each request's upstream, checked against its health;
- `IdleClients`: a plain-HTTP/1 client idle between requests held as a bare socket until it sends;
- `Mirrors`: a copy of each request a proxy step mirrors, sent once the upstream has answered, the
  two answers compared (before the response side changes the upstream's);
- `ResponseSide`: what the steps asked of the response; a 101 nobody asked for refused;
- `ShadowConfig`: with ``gateway_shadow``, each request decided again under a candidate config;
- `Observation`: metrics, the access log, the admin port, mitmweb's Gateway view;
- `GracefulShutdown`: SIGTERM drains the requests in flight;
- `Recorder`: with ``gateway_record``, each flow written (to replay it against another config);
- `StartupHeap`: what the process holds once it serves, frozen out of the garbage collector's
  full collections (last: after every other addon's start).

They share the config in service and the flow, and nothing else but the few services handed to
them here. On each swap of the config, listeners, the gate, the upstream connections' pools and
observation apply it, in that order. `addons/gateway.py` adds the code reloader
(hooks/reloader.py), which only a ``-s`` script has.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..client_certificates import ClientCertificates
from ..context import Exchanges
from ..observe.access_log import AccessLog
from ..observe.metrics import GatewayMetrics
from ..observe.timeline import Timelines
from .config_service import ConfigService, CurrentConfig
from .gate import RequestGate
from .heap import StartupHeap
from .idle_clients import IdleClients
from .lean_dispatch import LeanDispatch
from .listeners import Listeners
from .mirrors import Mirrors
from .observation import Observation
from .recorder import Recorder, RecordingTap
from .response_side import ResponseSide
from .shadow import ShadowConfig
from .shutdown import GracefulShutdown
from .tracing import Tracing
from .upstream_connections import UpstreamConnections


def gateway_addons() -> list[Any]:
    current = CurrentConfig()
    metrics = GatewayMetrics()
    access_log = AccessLog()
    exchanges: Exchanges = weakref.WeakKeyDictionary()
    client_certificates: ClientCertificates = weakref.WeakKeyDictionary()
    upstreams = UpstreamConnections()
    config_service = ConfigService(current, metrics)
    listeners = Listeners(current, client_certificates)
    timelines: Timelines = weakref.WeakKeyDictionary()
    tracing = Tracing(timelines, metrics)
    gate = RequestGate(current, exchanges, upstreams, client_certificates, timelines)
    observation = Observation(current, metrics, access_log)
    for follower in (listeners, gate, upstreams, observation, tracing):
        current.follow(follower.apply)
    idle_clients = IdleClients(metrics, upstreams)
    recorder = Recorder()
    shadow = ShadowConfig(metrics)
    return [
        LeanDispatch(),
        listeners,
        config_service,
        RecordingTap(recorder, also_for=lambda: shadow.active),
        tracing,  # (before the gate: it reads the client's traceparent, and the gate then keeps it)
        gate,
        upstreams,
        idle_clients,
        Mirrors(exchanges, metrics),
        ResponseSide(exchanges, access_log),
        shadow,
        observation,
        GracefulShutdown(on_drain=observation.stop_accepting, close_idle=idle_clients.close_all),
        recorder,
        StartupHeap(),
    ]
