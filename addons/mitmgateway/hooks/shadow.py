"""A shadow config (``gateway_shadow``): each live request decided again under a candidate config,
beside the serving one, and the two decisions compared.

The candidate decides offline, as `mitmgateway whatif` does (whatif/offline.py): the request as
the client sent it and the upstream's answer, kept by `RecordingTap`, go through the gate and the
response side of the candidate, which never contacts an upstream, keeps rate-limit counters and
caches of its own (in memory: a serving config's shared Redis counters are never touched) and
never delays a request. Where the two decisions differ (status, apiEndpoint, pipeline, the policy
that answered, serviceEndpoint), the flow says so in mitmweb's comment and the access log; every
decision records the candidate's (``decision.shadow``), and ``/metrics`` counts the differences.
The candidate file is watched and reloaded like the serving one; a broken candidate leaves the
last good one deciding, and never affects serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mitmproxy import ctx, http

from ..config.errors import ConfigError
from ..decision import Decision
from ..introspection import IntrospectionEndpoint
from ..jwks import KeySet, RemoteKeySet
from ..observe.metrics import GatewayMetrics
from ..outages import Outage
from ..whatif.offline import OfflineGateway, ReplayState
from ..whatif.outcome import Outcome, changes
from ..whatif.recorded import LiveRecorded
from .config_service import CONFIG_POLL_SECONDS, WatchedFiles
from .recorder import CLIENT_REQUEST_KEY

logger = logging.getLogger("mitmgateway")

SHADOW_MARKER = ":busts_in_silhouette:"


class _ShadowState(ReplayState):
    """A replay's state (counters in memory, no delay), with a jwksUri's keys fetched and tokens
    introspected for real: a shadow decides live traffic, and the identity provider is not an
    upstream."""

    def __init__(self) -> None:
        super().__init__({})

    def remote_key_set(self, uri: str, refresh_interval: float, timeout: float) -> KeySet:
        return RemoteKeySet(uri, refresh_interval, timeout)

    def introspection_endpoint(
        self, url: str, authorization: str | None, timeout: float, ttl: float, outage: Outage
    ) -> IntrospectionEndpoint:
        return IntrospectionEndpoint(url, authorization, timeout, ttl, outage)


class ShadowConfig:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.gateway: OfflineGateway | None = None
        self.path: Path | None = None
        self._state = _ShadowState()
        self.files = WatchedFiles()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.gateway is not None

    def load(self, loader) -> None:
        loader.add_option(
            "gateway_shadow",
            str,
            "",
            "A candidate gateway config that decides every request too, without serving it; where "
            "its decision differs from the serving config's, the flow, the access log and /metrics say so.",
        )

    def configure(self, updated: set[str]) -> None:
        if "gateway_shadow" not in updated:
            return
        value = ctx.options.gateway_shadow
        self.path = Path(value).expanduser().absolute() if value else None
        if self.path is None:
            self.gateway = None
            return
        try:
            self._load(self.path)
        except ConfigError as e:
            # Never a reason not to serve: a warning (mitmdump exits on errors logged at startup),
            # and loaded once the file is fixed.
            logger.warning("invalid shadow config, %s: %s", self._meanwhile(), e)
            return
        assert self.gateway is not None
        logger.info("shadow config %s decides every request too: %s", self.path, self.gateway.config.summary)

    def _meanwhile(self) -> str:
        return (
            "the last good one still decides"
            if self.gateway is not None
            else "no shadow decides until it is fixed"
        )

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _files(self) -> tuple[Path, ...]:
        assert self.path is not None
        return (self.path, *(self.gateway.config.watched_files[1:] if self.gateway else ()))

    def _load(self, path: Path) -> None:
        with self.files.loading(path, lambda: self._files()[1:]):
            self.gateway = OfflineGateway(path, {}, self._state)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            if self.path is None or not self.files.changed(self._files()):
                continue
            try:
                self._load(self.path)
            except ConfigError as e:
                logger.error("shadow config change refused, %s: %s", self._meanwhile(), e)
                continue
            logger.info("shadow config reloaded: %s", self.path)

    async def response(self, flow: http.HTTPFlow) -> None:
        gateway, decision = self.gateway, Decision.recorded(flow)
        if gateway is None or decision is None or CLIENT_REQUEST_KEY not in flow.metadata:
            return
        try:
            # The serving decision is compared by its parts, not by the messages: those the
            # shadow would send are never made.
            shadow = (await gateway.decide(LiveRecorded(flow), messages=False))[1]
        except Exception:  # the candidate's failure is never the serving request's
            logger.exception("shadow config failed to decide %s %s", flow.request.method, flow.request.path)
            return
        serving = Outcome.of_parts(decision, None, flow.response.status_code if flow.response else None, None)
        decision.shadow = shadow.as_json()
        if shadow.indeterminate or not changes(serving, shadow):
            return
        decision.shadow_differs = True
        flow.comment += f"; shadow: {serving.label} → {shadow.label}"
        if not flow.marked:
            flow.marked = SHADOW_MARKER
        self.metrics.shadow_difference(decision.pipeline, shadow.pipeline, serving.status, shadow.status)
