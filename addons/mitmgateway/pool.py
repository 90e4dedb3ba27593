"""The worker pool behind ``mitmgateway run --workers N``: N lean runners on one port.

Each worker is ``mitmgateway run`` with ``--reuse-port`` (SO_REUSEPORT: the kernel spreads
connections over them). The pool forwards SIGTERM/SIGINT, replaces a worker that dies after it
was serving, stops when one cannot start, and serves the admin port for all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mitmproxy.utils import vt_codes
from prometheus_client.multiprocess import mark_process_dead

from .admin_api.config_sections import checked_config
from .config.errors import ConfigError
from .config.source import file_signature
from .hooks.observation import POOL_DIR_ENV
from .observe.admin import AdminApiSettings, AdminServer, admin_api_settings, announced
from .observe.metrics import MULTIPROCESS_DIR_ENV, collect_multiprocess
from .runner import WORKER_ENV, LabelledFormatter

logger = logging.getLogger("mitmgateway")

RESTART_SECONDS = 1.0
"""The pool replaces a worker in the same slot at most this often."""


class WorkerPool:
    """N copies of ``mitmgateway run`` on one port; SIGTERM/SIGINT go to all of them.

    The pool serves the admin port for all of them: /metrics sums their prometheus-client
    multiprocess files, /ready holds once every worker has announced a valid config. A worker
    that dies after it was serving is replaced (at most once per RESTART_SECONDS per slot); one
    that dies before it ever served means the pool cannot start (bad config, port taken), and the
    pool stops.
    """

    def __init__(
        self,
        config: Path,
        settings: Sequence[str],
        workers: int,
        admin: tuple[str, int] | None,
        admin_api: AdminApiSettings | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            *(["-O"] if sys.flags.optimize else []),
            "-m",
            "mitmgateway",
            "run",
            "-c",
            str(config),
            "--reuse-port",
            *([] if sys.flags.optimize else ["--debug"]),
            *(arg for setting in settings for arg in ("--set", setting)),
        ]
        self.size = workers
        self.config = config
        self._config_signature = file_signature(config)
        self.admin_address = admin
        self.admin_api = admin_api
        self.stopping = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self.served: set[int] = set()
        """PIDs of workers seen ready."""
        self.signalled: set[int] = set()
        self.directory = Path(tempfile.mkdtemp(prefix="mitmgateway-pool-"))
        self.env = {
            **os.environ,
            POOL_DIR_ENV: str(self.directory),
            MULTIPROCESS_DIR_ENV: str(self.directory),
        }

    def _start_one(self, slot: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self.command, env={**self.env, WORKER_ENV: str(slot + 1)})
        if self.stopping:  # SIGTERM came while it was starting
            self.signalled.add(process.pid)
            process.send_signal(signal.SIGTERM)
        return process

    def _stop_all(self, *_: object) -> None:
        self.stopping = True
        for process in self.processes:
            # Once each: a second SIGTERM could reach a worker after its handler is gone.
            if process.poll() is None and process.pid not in self.signalled:
                self.signalled.add(process.pid)
                process.send_signal(signal.SIGTERM)

    def _ready_file(self, process: subprocess.Popen[bytes]) -> Path:
        return self.directory / f"ready-{process.pid}"

    def announced(self, key: str) -> list[object]:
        """What each running worker serves of the source `key` (the admin API waits for its writes)."""
        return [announced(self._ready_file(p), key) for p in self.processes if p.poll() is None]

    def ready(self) -> bool:
        return bool(self.processes) and all(
            process.poll() is None and self._ready_file(process).exists() for process in self.processes
        )

    def run(self) -> int:
        # On standard output in the workers' format, as mitmproxy's own log is.
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(LabelledFormatter(vt_codes.ensure_supported(sys.stdout), "pool"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        signal.signal(signal.SIGTERM, self._stop_all)
        signal.signal(signal.SIGINT, self._stop_all)
        self.admin = AdminServer(
            ready=self.ready,
            metrics=lambda: collect_multiprocess(str(self.directory)),
            served=self.announced,
        )
        try:
            for slot in range(self.size):
                self.processes.append(self._start_one(slot))
            self.admin.configure(self.admin_address, self.admin_api)
            code = self._supervise()
        finally:
            self._stop_all()
            code = self._wait_all()
            self.admin.stop()
            shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def _follow_admin_settings(self) -> None:
        """The admin API as the config now says (a new admin.tokenHash takes effect at once; the
        admin port's address is the one the pool started with)."""
        signature = file_signature(self.config)
        if signature == self._config_signature:
            return
        self._config_signature = signature
        try:
            settings = admin_api_settings(checked_config(self.config))
        except ConfigError:
            return  # the workers refuse it too, and say why
        self.admin.configure(self.admin_address, settings)

    def _supervise(self) -> int:
        last_restart = [0.0] * self.size
        while not self.stopping:
            time.sleep(0.2)
            self._follow_admin_settings()
            for i, process in enumerate(self.processes):
                if self._ready_file(process).exists():
                    self.served.add(process.pid)
                code = process.poll()
                if code is None or self.stopping:
                    continue
                self._ready_file(process).unlink(missing_ok=True)  # a worker killed hard leaves it
                # Its gauges (upstream_up, livemin) would otherwise count in /metrics for ever.
                mark_process_dead(process.pid, str(self.directory))
                who = f"worker {i + 1} (pid {process.pid})"
                if process.pid not in self.served:
                    logger.error("%s %s before serving; stopping", who, _how_it_ended(code))
                    return _exit_status(code) or 1
                wait = last_restart[i] + RESTART_SECONDS - time.monotonic()
                logger.error("%s %s; starting a new one", who, _how_it_ended(code))
                if wait > 0:
                    time.sleep(wait)  # a worker that keeps dying must not spin the CPU
                last_restart[i] = time.monotonic()
                self.processes[i] = self._start_one(i)
        return 0

    def _wait_all(self) -> int:
        worst = 0
        for process in self.processes:
            code = process.wait()
            if code == -signal.SIGTERM and process.pid in self.signalled:
                code = 0  # stopped as asked, while still starting (before its own handler was set)
            worst = max(worst, _exit_status(code))
        return worst


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _exit_status(code: int) -> int:
    """A shell's view of a return code: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code
