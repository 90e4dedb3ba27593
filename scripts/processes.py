"""Starting and stopping local processes on 127.0.0.1: shared by the demo, the bench, the soak run
and the tests (demo upstreams, the gateway's command lines, the walkthrough's config)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENTRY = ROOT / "addons" / "gateway.py"

WALKTHROUGH = """\
http:
  port: {port}
  hostname: 127.0.0.1
apiEndpoints:
  customers:
    host: customers.local
  orders:
    host: orders.local
serviceEndpoints:
  customers:
    url: '{customers}'
  orders:
    url: '{orders}'
policies: [jwt, proxy, rate-limit]
pipelines:
  customers:
    apiEndpoints: [customers]
    policies:
      - rate-limit: [{{action: {{max: {max}, windowMs: 1000{delay}}}}}]
      - jwt: [{{action: {{secretOrPublicKeyFile: {public_key}, checkCredentialExistence: false}}}}]
      - proxy: [{{action: {{serviceEndpoint: customers, changeOrigin: true}}}}]
  orders:
    apiEndpoints: [orders]
    policies:
      - rate-limit: [{{action: {{max: {max}, windowMs: 1000{delay}}}}}]
      - jwt: [{{action: {{secretOrPublicKeyFile: {public_key}, checkCredentialExistence: false}}}}]
      - proxy: [{{action: {{serviceEndpoint: orders, changeOrigin: true}}}}]
"""


def walkthrough_config(
    port: int,
    customers: str,
    orders: str,
    public_key: Path,
    max_requests: int = 1,
    delay_after: int | None = None,
) -> str:
    """Express Gateway's walkthrough (rate-limit, jwt, proxy for two services by Host) on `port`.

    The bench raises `max_requests` so that only the limiter's work, not its 429s, is measured,
    and sets `delay_after` to 0 so that Express Gateway, which it also runs, does not delay.
    """
    delay = "" if delay_after is None else f", delayAfter: {delay_after}"
    return WALKTHROUGH.format(
        port=port, customers=customers, orders=orders, public_key=public_key, max=max_requests, delay=delay
    )


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, and not one this process was given before: two calls in a row
    (a gateway's port and its admin port, say) could otherwise get the same one, since neither
    is bound until its server starts."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None, log: Path | None = None, timeout: float = 20
) -> None:
    """Wait until something listens on `port`; fail early if `process` exits (showing `log`)."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if process is not None and process.poll() is not None:
            output = log.read_text() if log else ""
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode} before listening:\n{output}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
        time.sleep(0.05)


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes holding a listening TCP socket on 127.0.0.1:`port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    pids.add(int(proc.name))
                    break
    return pids


def wait_for_listeners(port: int, count: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until `count` processes listen on `port`: a pool's workers start at their own pace,
    and the first one listening would otherwise take all the early connections."""
    deadline = time.monotonic() + timeout
    while len(listening_pids(port)) < count:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {count} listened")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} processes listening on 127.0.0.1:{port} after {timeout}s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_upstream(name: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """scripts/demo_upstream.py serving as `name` on `port` (a free one if None), once it listens."""
    port = free_port() if port is None else port
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo_upstream.py"), name, str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
    except BaseException:
        stop(process)
        raise
    return process, port


def gateway_command(
    runner: str, config: Path, confdir: Path, workers: int = 1, entry: Path = ENTRY
) -> list[str]:
    """The command line a user types to serve `config`.

    `runner`: mitmdump or mitmweb (with `entry` as the -s script), or mitmgateway (the lean
    runner, with `workers` processes). mitmproxy's own files (its CA) go to `confdir`, so that
    a run never touches the user's ~/.mitmproxy.
    """
    if runner == "mitmgateway":
        command = [str(BIN / runner), "run", "-c", str(config), "--workers", str(workers)]
    else:
        command = [str(BIN / runner), "-s", str(entry), "--set", f"gateway_config={config}"]
    return [*command, "--set", f"confdir={confdir}"]


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid` (Linux: VmRSS in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
