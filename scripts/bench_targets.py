"""What the benchmarks load, side by side on 127.0.0.1: nginx as the upstream, bare mitmdump in
reverse mode, the gateway under `mitmdump -s` and the lean runner, and Express Gateway, all
serving the walkthrough's pipeline (rate-limit with a max no run reaches, jwt with a valid RS256
token, proxy with changeOrigin) from one gateway.config.yml, over http and https.

Express Gateway 1.16.11 (its last release) comes from the npm registry into a cache folder the
first time, when node and npm are on the machine; without them, its rows are left out.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mitmproxy.version

from certificates import CertificateAuthority
from gen_keys import generate
from mint_token import mint
from processes import (
    BIN,
    free_port,
    gateway_command,
    stop,
    wait_for_listeners,
    wait_for_port,
    walkthrough_config,
)

HOST = "customers.local"
BASELINE = "mitmdump"
UPSTREAM = "upstream"
EXPRESS_GATEWAY = "express gateway"
EXPRESS_GATEWAY_VERSION = "1.16.11"
TRACED_ALL = "lean runner, 1 worker, tracing 1.0"
TRACED_FEW = "lean runner, 1 worker, tracing 0.01"
TRACED_COLLECTOR_DOWN = "lean runner, 1 worker, tracing 1.0, collector down"
TRACED = (TRACED_ALL, TRACED_FEW, TRACED_COLLECTOR_DOWN)
"""One lean worker with ``tracing`` (#18's cost), its spans sent to scripts/otlp_sink.py or, for
the last, to a port nothing listens on."""
EXPRESS_GATEWAY_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mitmgateway-bench"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location / {{ return 200 '{{"service":"customers","ok":true}}'; }}
    }}
}}
"""


def express_gateway_package() -> Path | None:
    """Express Gateway's package folder, installed from the npm registry if need be; None
    without node and npm, or if the install fails (said on stderr)."""
    package = EXPRESS_GATEWAY_CACHE / EXPRESS_GATEWAY_VERSION / "node_modules" / "express-gateway"
    if (package / "package.json").exists():
        return package
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    result = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(package.parents[1]),
            "--no-audit",
            "--no-fund",
            f"express-gateway@{EXPRESS_GATEWAY_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(f"bench: could not install Express Gateway, its rows are left out:\n{result.stderr}")
        return None
    return package


def express_gateway_command(package: Path, folder: Path, config: str) -> list[str]:
    """Express Gateway serving `config` from `folder`, with its own default system config (the
    in-memory emulation of its Redis) and empty models, as `eg gateway create` sets them up."""
    folder.mkdir()
    (folder / "gateway.config.yml").write_text(config)
    shutil.copy(package / "lib" / "config" / "system.config.yml", folder)
    shutil.copytree(package / "lib" / "config" / "models", folder / "models")
    return ["node", "-e", "require(process.argv[1])().load(process.argv[2]).run()", str(package), str(folder)]


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "platform": platform.platform(),
    }


class Bench:
    """The targets and their ports: each serves http on `port` and https on `tls_port`."""

    def __init__(
        self, work: Path, workers: int, vs: Path | None = None, express_gateway: bool = True
    ) -> None:
        self.work = work
        self.upstream_port = free_port()
        self.port = free_port()
        self.tls_port = free_port()
        confdir = work / "mitmproxy"
        self.key_pair = generate(work / "keys")
        self.token = mint(self.key_pair[0])
        issued = CertificateAuthority(work).issue("gateway", HOST, "127.0.0.1")
        config_text = walkthrough_config(
            self.port, *[f"http://127.0.0.1:{self.upstream_port}"] * 2, self.key_pair[1], 10**9, delay_after=0
        ) + (
            f"https:\n  port: {self.tls_port}\n  hostname: 127.0.0.1\n  tls:\n"
            f"    default: {{key: {issued.key_file}, cert: {issued.cert_file}}}\n"
        )
        # A max no run reaches keeps the limiter's work in every request without its 429s; no
        # delay, which Express Gateway adds by default (1 s from a window's second request).
        config = work / "gateway.config.yml"
        config.write_text(config_text)
        self.collector_port = free_port()
        traced = {}
        for name, endpoint_port, ratio in (
            (TRACED_ALL, self.collector_port, 1.0),
            (TRACED_FEW, self.collector_port, 0.01),
            (TRACED_COLLECTOR_DOWN, free_port(), 1.0),
        ):
            traced[name] = work / f"{name.replace(' ', '-').replace(',', '')}.yml"
            endpoint = f"http://127.0.0.1:{endpoint_port}/v1/traces"
            traced[name].write_text(
                config_text + f"tracing: {{endpoint: '{endpoint}', sampleRatio: {ratio}}}\n"
            )
        upstream = f"http://127.0.0.1:{self.upstream_port}"
        bare = [str(BIN / "mitmdump"), "--set", f"confdir={confdir}"]
        self.targets: dict[str, list[str] | None] = {
            UPSTREAM: None,
            BASELINE: [
                *bare,
                "--mode",
                f"reverse:{upstream}@{self.port}",
                "--mode",
                f"reverse:{upstream}@{self.tls_port}",
            ],
            "gateway (mitmdump -s)": gateway_command("mitmdump", config, confdir),
            "lean runner, 1 worker": gateway_command("mitmgateway", config, confdir),
            # The same config as its own shadow: every request decided twice (#15's cost).
            "lean runner, 1 worker, shadow": [
                *gateway_command("mitmgateway", config, confdir),
                "--set",
                f"gateway_shadow={config}",
            ],
            f"lean runner, {workers} workers": gateway_command("mitmgateway", config, confdir, workers),
            **{name: gateway_command("mitmgateway", file, confdir) for name, file in traced.items()},
        }
        if express_gateway and (package := express_gateway_package()) is not None:
            self.targets[EXPRESS_GATEWAY] = express_gateway_command(
                package, work / "express-gateway", config_text
            )
        self.workers = {f"lean runner, {workers} workers": workers}
        """Targets that run several processes on the port: each must listen before the load starts."""
        self.env: dict[str, dict[str, str]] = {}
        """Targets that run another checkout's code (--vs): their environment."""
        if vs is not None:
            # The other checkout's gateway.py (it puts its own package first on the path), and its
            # package for the lean runner, which then loads that checkout's gateway.py as well.
            entry = vs / "addons" / "gateway.py"
            other = {**os.environ, "PYTHONPATH": str(vs / "addons")}
            for name, command in (
                (f"gateway (mitmdump -s), {vs.name}", gateway_command("mitmdump", config, confdir, 1, entry)),
                (f"lean runner, 1 worker, {vs.name}", gateway_command("mitmgateway", config, confdir)),
            ):
                self.targets[name] = command
                self.env[name] = other

    def start_collector(self) -> subprocess.Popen[bytes]:
        sink = Path(__file__).resolve().parent / "otlp_sink.py"
        process = subprocess.Popen([sys.executable, str(sink), str(self.collector_port)])
        wait_for_port(self.collector_port, process)
        return process

    def start_upstream(self) -> subprocess.Popen[bytes]:
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.work, port=self.upstream_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.work)], stderr=subprocess.DEVNULL)
        wait_for_port(self.upstream_port, process)
        return process

    def start(self, target: str) -> subprocess.Popen[bytes] | None:
        """`target` listening on its ports (None for the upstream, which is already up)."""
        command = self.targets[target]
        if command is None:
            return None
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env.get(target)
        )
        try:
            wait_for_port(self.port, process)
            wait_for_port(self.tls_port, process)
            if target in self.workers:
                # The first worker up would otherwise take every connection the load opens.
                wait_for_listeners(self.port, self.workers[target], process)
        except BaseException:
            stop(process)
            raise
        return process

    def port_of(self, target: str) -> int:
        return self.upstream_port if self.targets[target] is None else self.port


def stop_target(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        stop(process)
        time.sleep(0.3)  # let the ports and the CPU settle before the next target
