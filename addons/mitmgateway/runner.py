"""The lean runner: our addons in a mitmproxy master that holds only what a reverse proxy needs.

mitmdump dispatches every event of every flow to ~35 addons, almost none of which a gateway uses;
this master keeps core, the proxy server, next-layer and TLS config, the script loader (so code
edits reload live, as under ``mitmdump -s``) and the startup error check. ``--workers N`` runs N
such processes on one port under the pool (pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mitmproxy import exceptions, log, master, options
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

from .mitm.dispatch import DispatchTable

logger = logging.getLogger("mitmgateway")

# The entry mitmproxy loads under mitmdump: beside the package in a source checkout (the layout
# users edit live). An installed wheel has no such file and gets the addons without code reload.
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "gateway.py"
WORKER_ENV = "MITMGATEWAY_WORKER"
"""Set by the pool in each worker: its slot (1..N), which starts its log lines."""
_PR_SET_PDEATHSIG = 1


def _is_our_entry_script(path: Path) -> bool:
    try:
        return "from mitmgateway.hooks import gateway_addons" in path.read_text()
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
            from .hooks import gateway_addons

            gateway_master = GatewayMaster(opts, gateway_addons())
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
