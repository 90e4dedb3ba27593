"""Observation: metrics, the access log, the admin port (/health, /ready, /metrics) and
mitmweb's Gateway content view, all read from each flow's decision record once it is over."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mitmproxy import http

from ..config.model import GatewayConfig
from ..decision import Decision
from ..observe.access_log import AccessLog
from ..observe.admin import AdminServer, admin_api_settings, announce_sources
from ..observe.decision_view import DecisionView
from ..observe.metrics import GatewayMetrics
from ..shared_consumers import SharedConsumers
from .config_service import CurrentConfig

POOL_DIR_ENV = "MITMGATEWAY_POOL_DIR"
"""Set by `mitmgateway run --workers N` in its workers: the pool serves the admin port, and a
worker tells it that it is ready by a file in this folder."""


class Observation:
    def __init__(self, current: CurrentConfig, metrics: GatewayMetrics, access_log: AccessLog) -> None:
        self.current = current
        self.metrics = metrics
        self.access_log = access_log
        self.accepting = True
        self.admin = AdminServer(
            ready=self.ready,
            metrics=self.metrics.exposition,
            served=lambda key: [self.current.served().get(key)],
        )
        pool_dir = os.environ.get(POOL_DIR_ENV)
        self._ready_file = Path(pool_dir) / f"ready-{os.getpid()}" if pool_dir else None
        self._running = False
        self._announcing = threading.Lock()
        self._decision_view = DecisionView()

    def ready(self) -> bool:
        return self.current.config is not None and self.accepting

    def load(self, loader) -> None:
        self._decision_view.install()

    def apply(self, config: GatewayConfig, previous: GatewayConfig | None) -> None:
        self.access_log.configure(config.access_log)
        if isinstance(config.consumers, SharedConsumers):
            # A new version of the consumers comes without a swap: the pool hears of it too.
            config.consumers.on_change = self._announce_ready
        if self._ready_file is None:
            admin = config.admin
            self.admin.configure((admin.address, admin.port) if admin else None, admin_api_settings(config))
        self._announce_ready()

    def running(self) -> None:
        self._running = True
        self._announce_ready()

    def _announce_ready(self) -> None:
        """Tell the pool that this worker is ready, and which files its config was read from."""
        if self._ready_file is not None and self._running and self.ready():
            # The event loop (a swap) and the consumers' polling thread both announce: one at a
            # time, so an older announcement never replaces a newer one.
            with self._announcing:
                announce_sources(self._ready_file, self.current.served())

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
        self._decision_view.uninstall()

    def response(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def _observe(self, flow: http.HTTPFlow) -> None:
        decision = Decision.recorded(flow)
        if decision is None or not flow.live:
            return
        self.metrics.observe(flow, decision)
        if self.access_log.enabled:
            self.access_log.write(flow, decision)
