"""Throughput and latency of the gateway against bare mitmproxy, measured in one run.

Starts nginx as a fast upstream on 127.0.0.1, then, in alternating rounds, loads each target with
wrk: the upstream directly, bare `mitmdump --mode reverse:...`, `mitmdump -s addons/gateway.py`
with the walkthrough's full pipeline (rate-limit with a high max, jwt with a valid RS256 token,
proxy with changeOrigin), and the lean runner (`mitmgateway run`) with 1 and N workers, and with
1 worker and the same config as its shadow (``gateway_shadow``). Each
target is started fresh for its turn and stopped after it. Prints requests/s and p50/p99 latency
(medians over the rounds) with the ratios to bare mitmdump, and writes a JSON of every figure and
a PNG chart beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mitmproxy.version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_keys import generate
from mint_token import mint
from processes import (
    BIN,
    ROOT,
    free_port,
    gateway_command,
    stop,
    wait_for_listeners,
    wait_for_port,
    walkthrough_config,
)

HOST = "customers.local"
BASELINE = "mitmdump"

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


@dataclass
class Measurement:
    target: str
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no {percentile}% latency in wrk's output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(port: int, token: str, seconds: float, connections: int) -> tuple[float, float, float, int]:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--latency",
        "-H",
        f"Host: {HOST}",
        "-H",
        f"Authorization: Bearer {token}",
        f"http://127.0.0.1:{port}/customers",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in match.groups())
    return rps, _latency_ms(output, "50"), _latency_ms(output, "99"), errors


class Bench:
    def __init__(self, work: Path, workers: int, vs: Path | None = None) -> None:
        self.work = work
        self.upstream_port = free_port()
        self.port = free_port()
        confdir = work / "mitmproxy"
        self.key_pair = generate(work / "keys")
        self.token = mint(self.key_pair[0])
        config = work / "gateway.config.yml"
        # The walkthrough's pipelines, both on nginx; a max no run reaches keeps the limiter's
        # work in every request without its 429s.
        upstream = f"http://127.0.0.1:{self.upstream_port}"
        config.write_text(walkthrough_config(self.port, upstream, upstream, self.key_pair[1], 10**9))
        bare = [str(BIN / "mitmdump"), "--set", f"confdir={confdir}"]
        self.targets: dict[str, list[str] | None] = {
            "upstream": None,
            BASELINE: [*bare, "--mode", f"reverse:{upstream}@{self.port}"],
            "gateway (mitmdump -s)": gateway_command("mitmdump", config, confdir),
            "lean runner, 1 worker": gateway_command("mitmgateway", config, confdir),
            # The same config as its own shadow: every request decided twice (#15's cost).
            "lean runner, 1 worker, shadow": [
                *gateway_command("mitmgateway", config, confdir),
                "--set",
                f"gateway_shadow={config}",
            ],
            f"lean runner, {workers} workers": gateway_command("mitmgateway", config, confdir, workers),
        }
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

    def start_upstream(self) -> subprocess.Popen[bytes]:
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.work, port=self.upstream_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.work)], stderr=subprocess.DEVNULL)
        wait_for_port(self.upstream_port, process)
        return process

    def measure(self, target: str, round_: int, seconds: float, connections: int) -> Measurement:
        command = self.targets[target]
        process = None
        port = self.upstream_port
        if command is not None:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env.get(target)
            )
            port = self.port
        try:
            wait_for_port(port, process)
            if process is not None and target in self.workers:
                # The first worker up would otherwise take every connection wrk opens.
                wait_for_listeners(port, self.workers[target], process)
            run_wrk(port, self.token, 1, connections)  # warm up: connections, caches, imports
            rps, p50, p99, errors = run_wrk(port, self.token, seconds, connections)
        finally:
            if process is not None:
                stop(process)
                time.sleep(0.3)  # let the port and the CPU settle before the next target
        return Measurement(target, round_, rps, p50, p99, errors)


def checkout_commit(checkout: Path) -> str:
    """The short commit a checkout is at (its folder's name if it is not a git checkout)."""
    result = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else checkout.resolve().name


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


def summarize(measurements: list[Measurement], targets: list[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for target in targets:
        mine = [m for m in measurements if m.target == target]
        summary[target] = {
            "requests_per_second": statistics.median(m.requests_per_second for m in mine),
            "p50_ms": statistics.median(m.p50_ms for m in mine),
            "p99_ms": statistics.median(m.p99_ms for m in mine),
            "errors": sum(m.errors for m in mine),
        }
    base = summary[BASELINE]
    for figures in summary.values():
        figures["rps_vs_mitmdump"] = figures["requests_per_second"] / base["requests_per_second"]
        figures["p99_vs_mitmdump"] = figures["p99_ms"] / base["p99_ms"]
    return summary


def chart(summary: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The upstream alone is two orders of magnitude faster: it goes in the title, not the bars.
    names = [n for n in summary if n != "upstream"]
    upstream = summary["upstream"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    bars = left.barh(names, [summary[n]["requests_per_second"] for n in names], color="#4c72b0")
    left.bar_label(bars, labels=[f"{summary[n]['rps_vs_mitmdump']:.2f}x mitmdump" for n in names], padding=3)
    left.set_xlabel("requests/s (higher is better)")
    left.invert_yaxis()
    left.margins(x=0.3)
    y = range(len(names))
    right.barh([i - 0.2 for i in y], [summary[n]["p50_ms"] for n in names], height=0.4, label="p50")
    right.barh([i + 0.2 for i in y], [summary[n]["p99_ms"] for n in names], height=0.4, label="p99")
    right.set_yticks(list(y), names)
    right.invert_yaxis()
    right.set_xlabel("latency, ms (lower is better)")
    right.legend()
    fig.suptitle(
        f"{title}\nnginx upstream alone: {upstream['requests_per_second']:.0f} req/s, "
        f"p99 {upstream['p99_ms']:.2f} ms",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument(
        "--vs",
        type=Path,
        help="another checkout (say a git worktree of an earlier commit): its gateway is measured too, "
        "under mitmdump -s and one lean worker, in the same alternating rounds (an A/B of two versions)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TARGET",
        help="measure only this target (its name as printed; repeatable), beside bare mitmdump for the "
        "ratios; prints the figures and writes nothing (docs/bench holds whole runs)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is missing (Debian: apt-get install wrk nginx-light)", file=sys.stderr)
            return 1

    with tempfile.TemporaryDirectory(prefix="mitmgateway-bench-") as tmp:
        bench = Bench(Path(tmp), args.workers, args.vs.resolve() if args.vs else None)
        targets = [t for t in bench.targets if not args.only or t == BASELINE or t in args.only]
        if args.only and len(targets) != len(set(args.only) | {BASELINE}):
            print(f"bench: --only names no such target; targets: {', '.join(bench.targets)}", file=sys.stderr)
            return 2
        upstream = bench.start_upstream()
        measurements: list[Measurement] = []
        try:
            for round_ in range(args.rounds):
                # Rotate the order so no target always runs first (or right after another).
                order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
                for target in order:
                    m = bench.measure(target, round_, args.seconds, args.connections)
                    measurements.append(m)
                    print(
                        f"round {round_ + 1}/{args.rounds}  {target:<36} {m.requests_per_second:9.0f} req/s  "
                        f"p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  errors {m.errors}",
                        flush=True,
                    )
        finally:
            stop(upstream)

    summary = summarize(measurements, targets)
    info = machine()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "vs") and v is not None}
    if args.vs:
        # The other checkout's commit, not its path on this machine.
        settings["vs"] = checkout_commit(args.vs)
    print(f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}, mitmproxy {info['mitmproxy']}")
    print(f"wrk -t1 -c{args.connections}, {args.seconds:g} s per target, median of {args.rounds} rounds")
    print(f"{'target':<36} {'req/s':>9} {'x mitmdump':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for target, f in summary.items():
        print(
            f"{target:<36} {f['requests_per_second']:9.0f} {f['rps_vs_mitmdump']:10.2f}x "
            f"{f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['errors']:7.0f}"
        )
    if args.only:
        return 1 if any(f["errors"] for f in summary.values()) else 0
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "machine": info,
        "settings": settings,
        "summary": summary,
        "measurements": [asdict(m) for m in measurements],
    }
    (args.out / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    title = (
        f"mitmgateway vs bare mitmdump: {info['cpu']}, {info['cores']} cores, mitmproxy {info['mitmproxy']}; "
        f"wrk -c{args.connections}, median of {args.rounds} rounds"
    )
    chart(summary, title, args.out / "bench.png")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 1 if any(f["errors"] for f in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
