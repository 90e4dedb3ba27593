"""The lean runner: our addons in a mitmproxy master that holds only what a reverse proxy needs.

mitmdump dispatches every event of every flow to ~35 addons, almost none of which a gateway uses;
this master keeps core, the proxy server, next-layer and TLS config, the script loader (so code
edits reload live, as under ``mitmdump -s``) and the startup error check. ``--workers N`` runs N
such processes on one port (SO_REUSEPORT: the kernel spreads connections over them) under a small
supervisor that forwards SIGTERM and replaces a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, log, master, options
from mitmproxy.addons import (
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    script,
    termlog,
    tlsconfig,
)
from mitmproxy.utils import vt_codes
from prometheus_client.multiprocess import mark_process_dead

from .addon import POOL_DIR_ENV
from .admin import AdminServer
from .metrics import MULTIPROCESS_DIR_ENV, collect_multiprocess

logger = logging.getLogger("mitmgateway")

# The entry mitmproxy loads under mitmdump: beside the package in a source checkout (the layout
# users edit live). An installed wheel has no such file and gets the addons without code reload.
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "gateway.py"
WORKER_ENV = "MITMGATEWAY_WORKER"
"""Set by the pool in each worker: its slot (1..N), which starts its log lines."""
RESTART_SECONDS = 1.0
"""The pool replaces a worker in the same slot at most this often."""
_PR_SET_PDEATHSIG = 1
_ADDON_SET_EVENTS = frozenset({"load", "configure", "running", "done"})


class DispatchTable(addonmanager.AddonManager):
    """mitmproxy's addon manager, minus the work it repeats for every event of every flow.

    The stock manager walks every addon (and their children) with getattr for each event, then
    triggers an `update` event after each lifecycle event. Here the handlers of each flow event
    are looked up once and remembered; any load, configure, running or done event (which is what
    a script load or reload, or an option change, goes through) drops the table. `update` is
    skipped when no addon handles it.
    """

    def __init__(self, gateway_master: master.Master) -> None:
        super().__init__(gateway_master)
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def _handlers_for(self, event: hooks.Hook) -> list[Callable[..., Any]]:
        handlers = self._handlers.get(event.name)
        if handlers is None:
            handlers = [func for addon in self.chain for _, func in self._iter_hooks(addon, event)]
            self._handlers[event.name] = handlers
        return handlers

    def invoke_addon_sync(self, addon: Any, event: hooks.Hook) -> None:
        if event.name in _ADDON_SET_EVENTS:
            self._handlers.clear()
        super().invoke_addon_sync(addon, event)

    async def trigger_event(self, event: hooks.Hook) -> None:
        if event.name in _ADDON_SET_EVENTS:
            self._handlers.clear()
            await super().trigger_event(event)
            return
        args = event.args()
        for func in self._handlers_for(event):
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                logger.error("Addon error: %s", e, exc_info=True)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        message = event.args()[0]
        if isinstance(message, flow.Flow) and self._handlers_for(hooks.UpdateHook([])):
            await self.trigger_event(hooks.UpdateHook([message]))


def _is_our_entry_script(path: Path) -> bool:
    try:
        return "from mitmgateway.addon import Gateway" in path.read_text()
    except OSError:
        return False


class LabelledFormatter(log.MitmFormatter):
    """mitmproxy's log format (``[12:00:00.000] message``) with who speaks after the time: the
    pool and its workers write to one terminal."""

    def __init__(self, colorize: bool, label: str) -> None:
        super().__init__(colorize)
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        labelled = logging.makeLogRecord(record.__dict__)
        labelled.msg, labelled.args = f"{self.label}: {record.getMessage()}", None
        return super().format(labelled)


class GatewayMaster(master.Master):
    def __init__(self, opts: options.Options, gateway: Sequence[Any] = ()) -> None:
        """`gateway`: the gateway's addons when they are not loaded as a script."""
        super().__init__(opts, with_termlog=False)
        opts.changed.disconnect(self.addons._configure_all)
        self.addons = DispatchTable(self)
        self._termlog_addon = termlog.TermLog()
        if slot := os.environ.get(WORKER_ENV):
            handler = self._termlog_addon.logger
            handler.setFormatter(LabelledFormatter(handler.has_vt_codes, f"worker {slot}"))
        self.addons.add(
            self._termlog_addon,
            core.Core(),
            # An h2c upgrade a policy let through could become a raw tunnel past every policy.
            disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(),
            # In mitmdump's order: the gateway's TLS hooks decide before TlsConfig's.
            script.ScriptLoader(),
            *gateway,
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck(),
        )


def _reuse_port_loop_factory() -> asyncio.AbstractEventLoop:
    """An event loop whose listening sockets set SO_REUSEPORT, so workers can share one port."""

    class ReusePortLoop(asyncio.SelectorEventLoop):
        async def create_server(self, *args, **kwargs):  # type: ignore[override]
            kwargs["reuse_port"] = True
            return await super().create_server(*args, **kwargs)

    return ReusePortLoop()


def serve(config: Path, settings: Sequence[str], reuse_port: bool = False) -> int:
    """Run one gateway process until it is told to stop; returns its exit code."""

    async def main() -> int:
        logging.getLogger().setLevel(logging.INFO)
        # One line per client connection is noise at gateway rates; the access log tells each request.
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
        opts = options.Options()
        as_script = _is_our_entry_script(ENTRY_SCRIPT)
        if as_script:
            gateway_master = GatewayMaster(opts)
        else:
            from .addon import Gateway
            from .shutdown import GracefulShutdown

            gateway_master = GatewayMaster(opts, (Gateway(), GracefulShutdown()))
        try:
            opts.set(f"gateway_config={config}", *settings, defer=True)
            if as_script:
                opts.update(scripts=[str(ENTRY_SCRIPT)])
        except exceptions.OptionsError as e:  # a bad --set; script errors go to errorcheck
            print(f"mitmgateway: {e}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, gateway_master.shutdown)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        await gateway_master.run()
        return 0

    if reuse_port:
        _die_with_pool()
        with asyncio.Runner(loop_factory=_reuse_port_loop_factory) as runner:
            return runner.run(main())
    return asyncio.run(main())


def _die_with_pool() -> None:
    """In a pool's worker: get SIGTERM when the pool dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerPool:
    """N copies of ``mitmgateway run`` on one port; SIGTERM/SIGINT go to all of them.

    The pool serves the admin port for all of them: /metrics sums their prometheus-client
    multiprocess files, /ready holds once every worker has announced a valid config. A worker
    that dies after it was serving is replaced (at most once per RESTART_SECONDS per slot); one
    that dies before it ever served means the pool cannot start (bad config, port taken), and the
    pool stops.
    """

    def __init__(
        self, config: Path, settings: Sequence[str], workers: int, admin: tuple[str, int] | None
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
        self.admin_address = admin
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
        admin = AdminServer(ready=self.ready, metrics=lambda: collect_multiprocess(str(self.directory)))
        try:
            for slot in range(self.size):
                self.processes.append(self._start_one(slot))
            admin.configure(self.admin_address)
            code = self._supervise()
        finally:
            self._stop_all()
            code = self._wait_all()
            admin.stop()
            shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def _supervise(self) -> int:
        last_restart = [0.0] * self.size
        while not self.stopping:
            time.sleep(0.2)
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
            worst = max(worst, _exit_status(process.wait()))
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
