"""Throughput and latency of the gateway against bare mitmproxy and Express Gateway, in one run.

Starts nginx as a fast upstream on 127.0.0.1, then, in alternating rounds, starts each target
(scripts/bench_targets.py: the upstream alone, bare `mitmdump --mode reverse:...`, the gateway
under `mitmdump -s` and the lean runner with 1 and N workers, 1 worker with the same config as
its shadow, 1 worker with tracing at ratios 1.0 and 0.01 and with its collector down (those on the
first load only), and Express Gateway) fresh for its turn and puts each load on it in turn:

- keep-alive connections, 16 and 256 (wrk);
- a new TCP connection per request, and a new TLS connection per request on the https listener
  (wrk with `Connection: close`);
- HTTP/2 over TLS, 16 connections with 10 streams each (h2load, Debian's nghttp2-client).

Then the many-idle-clients run (scripts/bench_idle.py) on bare mitmdump, one lean worker and
Express Gateway. Prints requests/s and p50/p99 latency (medians over the rounds) with the ratios
to bare mitmdump and to Express Gateway, and writes a JSON of every figure and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_idle import IDLE_TARGETS, WAVE, arrivals, measure_idle
from bench_targets import BASELINE, EXPRESS_GATEWAY, HOST, TRACED, UPSTREAM, Bench, machine, stop_target
from processes import ROOT


@dataclass(frozen=True)
class Load:
    key: str
    """Its name on the command line (--load) and in the JSON."""
    title: str
    connections: int
    tls: bool = False
    """On the https listener."""
    fresh: bool = False
    """A new connection for each request (`Connection: close`)."""
    h2: bool = False
    """HTTP/2 with h2load, 10 streams at a time on each connection."""

    def fits(self, target: str) -> bool:
        if target == UPSTREAM:
            # nginx alone is ~100 times faster: a new connection per request would run this machine
            # out of ports, and it has no https listener here.
            return not (self.tls or self.fresh)
        if target in TRACED:
            return self.key == "c16"  # tracing's cost, on the everyday load
        return not (self.h2 and target == EXPRESS_GATEWAY)  # Express Gateway has no HTTP/2


LOADS = (
    Load("c16", "keep-alive, 16 connections", 16),
    Load("c256", "keep-alive, 256 connections", 256),
    Load("tcp", "new TCP connection per request, 16 at a time", 16, fresh=True),
    Load("tls", "new TLS connection per request, 16 at a time", 16, tls=True, fresh=True),
    Load("h2", "HTTP/2 over TLS, 16 connections x 10 streams", 16, tls=True, h2=True),
)


@dataclass
class Measurement:
    load: str
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


def run_wrk(
    url: str, token: str, seconds: float, connections: int, fresh: bool
) -> tuple[float, float, float, int]:
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
        *(["-H", "Connection: close"] if fresh else []),
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        # With `Connection: close`, wrk counts each server close as a read error; those are
        # answers, not failures (a failed one is a non-2xx or a timeout).
        connect, read, write, timeout = (int(g) for g in match.groups())
        errors += connect + write + timeout + (0 if fresh else read)
    return rps, _latency_ms(output, "50"), _latency_ms(output, "99"), errors


def run_h2load(
    url: str, token: str, seconds: float, connections: int, log: Path
) -> tuple[float, float, float, int]:
    """h2load for `seconds`; p50/p99 from its per-request log (it prints no percentiles)."""
    log.unlink(missing_ok=True)
    command = [
        "h2load",
        "-t1",
        f"-c{connections}",
        "-m10",
        f"-D{round(seconds)}",
        f"--log-file={log}",
        "-H",
        f":authority: {HOST}",
        "-H",
        f"authorization: Bearer {token}",
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if not match or "h2" not in (re.search(r"Application protocol: (\S+)", output) or [""])[0]:
        raise RuntimeError(f"h2load did not speak HTTP/2 or finished nothing:\n{output}")
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    durations = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    statuses = [line.split()[1] for line in log.read_text().splitlines() if line.strip()]
    errors = int(match.group(2)) - int(match.group(3)) + sum(1 for s in statuses if not s.startswith("2"))
    p50, p99 = (durations[min(len(durations) - 1, int(len(durations) * q))] for q in (0.5, 0.99))
    return rps, p50, p99, errors


def load_once(bench: Bench, target: str, load: Load, seconds: float) -> tuple[float, float, float, int]:
    port = bench.tls_port if load.tls else bench.port_of(target)
    url = f"{'https' if load.tls else 'http'}://127.0.0.1:{port}/customers"
    if load.h2:
        return run_h2load(url, bench.token, seconds, load.connections, bench.work / "h2load.log")
    return run_wrk(url, bench.token, seconds, load.connections, load.fresh)


def measure(bench: Bench, target: str, loads: list[Load], round_: int, seconds: float) -> list[Measurement]:
    process = bench.start(target)
    measurements = []
    try:
        for load in loads:
            if not load.fits(target):
                continue
            if seconds > 1:  # (a 1-second run is a smoke test of the bench itself)
                load_once(bench, target, load, 1)  # warm up: connections, caches, imports
            m = Measurement(load.key, target, round_, *load_once(bench, target, load, seconds))
            measurements.append(m)
            print(
                f"round {round_ + 1}  {load.key:<5} {target:<32} {m.requests_per_second:9.0f} req/s  "
                f"p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  errors {m.errors}",
                flush=True,
            )
    finally:
        stop_target(process)
    return measurements


def checkout_commit(checkout: Path) -> str:
    """The short commit a checkout is at (its folder's name if it is not a git checkout)."""
    result = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else checkout.resolve().name


def summarize(measurements: list[Measurement], load: str, targets: list[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for target in targets:
        mine = [m for m in measurements if m.target == target and m.load == load]
        if mine:
            summary[target] = {
                "requests_per_second": statistics.median(m.requests_per_second for m in mine),
                "p50_ms": statistics.median(m.p50_ms for m in mine),
                "p99_ms": statistics.median(m.p99_ms for m in mine),
                "errors": sum(m.errors for m in mine),
            }
    for reference, suffix in ((BASELINE, "mitmdump"), (EXPRESS_GATEWAY, "express_gateway")):
        base = summary.get(reference)
        # A reference that answered nothing in its rounds (1 s at 256 connections on a slow
        # machine) gives no ratios.
        if base is not None and base["requests_per_second"] > 0 and base["p99_ms"] > 0:
            for figures in summary.values():
                figures[f"rps_vs_{suffix}"] = figures["requests_per_second"] / base["requests_per_second"]
                figures[f"p99_vs_{suffix}"] = figures["p99_ms"] / base["p99_ms"]
    return summary


def chart(
    summaries: dict[str, dict[str, dict[str, float]]], idle: list[dict[str, object]], title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(summaries) + (1 if idle else 0)
    columns = 2
    rows = (panels + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(16, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    titles = {load.key: load.title for load in LOADS}
    for ax, (load, summary) in zip(flat, summaries.items(), strict=False):
        # The upstream alone is two orders of magnitude faster: it goes in the panel's title.
        names = [n for n in summary if n != UPSTREAM]
        bars = ax.barh(names, [summary[n]["requests_per_second"] for n in names], color="#4c72b0")
        labels = []
        for n in names:
            f = summary[n]
            ratio = f"  {f['rps_vs_mitmdump']:.2f}x mitmdump" if "rps_vs_mitmdump" in f else ""
            labels.append(f"p99 {f['p99_ms']:.0f} ms{ratio}")
        ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
        ax.invert_yaxis()
        ax.margins(x=0.45)
        ax.tick_params(axis="y", labelsize=8)
        upstream = (
            f"; nginx alone {summary[UPSTREAM]['requests_per_second']:.0f} req/s"
            if UPSTREAM in summary
            else ""
        )
        ax.set_title(f"{titles[load]}{upstream}", fontsize=9)
        ax.set_xlabel("requests/s (higher is better)", fontsize=8)
    if idle:
        ax = flat[len(summaries)]
        names = [f"{r['target']}, {r['arrival']}" for r in idle]
        # A target that closed the idle clients holds none of them: no figure for it.
        kib = [float(r["kib_per_idle_client"]) if r["still_connected"] else 0.0 for r in idle]  # type: ignore[arg-type]
        bars = ax.barh(names, kib, color="#dd8452")
        ax.bar_label(
            bars,
            labels=[
                f"upstream conns: {r['upstream_connections_after_requests']}, "
                f"then {r['upstream_connections_after_idle']}"
                if r["still_connected"]
                else f"closed {r['clients']} of {r['clients']} while idle"
                for r in idle
            ],
            padding=3,
            fontsize=8,
        )
        ax.invert_yaxis()
        ax.margins(x=0.6)
        ax.set_title(f"{idle[0]['clients']} idle keep-alive clients: KiB of RSS each", fontsize=9)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--idle-clients", type=int, default=2000, help="0 leaves the idle run out")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument(
        "--load",
        action="append",
        choices=[load.key for load in LOADS],
        help="only this load (repeatable); prints the figures and writes nothing",
    )
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
    for tool in ("wrk", "nginx", "h2load"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(
                f"bench: {tool} is missing (Debian: apt-get install wrk nginx-light nghttp2-client)",
                file=sys.stderr,
            )
            return 1
    partial = bool(args.only or args.load)
    loads = [load for load in LOADS if not args.load or load.key in args.load]

    with tempfile.TemporaryDirectory(prefix="mitmgateway-bench-") as tmp:
        bench = Bench(Path(tmp), args.workers, args.vs.resolve() if args.vs else None)
        targets = [t for t in bench.targets if not args.only or t == BASELINE or t in args.only]
        if args.only and len(targets) != len(set(args.only) | {BASELINE}):
            print(f"bench: --only names no such target; targets: {', '.join(bench.targets)}", file=sys.stderr)
            return 2
        upstream = bench.start_upstream()
        collector = bench.start_collector()
        measurements: list[Measurement] = []
        idle: list[dict[str, object]] = []
        try:
            for round_ in range(args.rounds):
                # Rotate the order so no target always runs first (or right after another).
                order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
                for target in order:
                    measurements += measure(bench, target, loads, round_, args.seconds)
            if args.idle_clients and not partial:
                idle = [
                    measure_idle(bench, t, args.idle_clients, wave)
                    for t in IDLE_TARGETS
                    if t in bench.targets
                    for wave in arrivals(args.idle_clients, WAVE)
                ]
        finally:
            stop_target(upstream)
            stop_target(collector)

    summaries = {load.key: summarize(measurements, load.key, targets) for load in loads}
    info = machine()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "vs") and v is not None}
    if args.vs:
        # The other checkout's commit, not its path on this machine.
        settings["vs"] = checkout_commit(args.vs)
    print(f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}, mitmproxy {info['mitmproxy']}")
    print(f"{args.seconds:g} s per target and load, median of {args.rounds} rounds")
    for load in loads:
        print(f"\n{load.title}")
        columns = ("req/s", "x mitmdump", "x EG", "p50 ms", "p99 ms", "errors")
        print(
            f"{'target':<52} "
            + " ".join(f"{c:>{w}}" for c, w in zip(columns, (8, 11, 6, 8, 8, 7), strict=True))
        )
        for target, f in summaries[load.key].items():
            eg = f"{f['rps_vs_express_gateway']:5.2f}x" if "rps_vs_express_gateway" in f else "     -"
            md = f"{f['rps_vs_mitmdump']:10.2f}x" if "rps_vs_mitmdump" in f else "          -"
            print(
                f"{target:<52} {f['requests_per_second']:8.0f} {md} {eg} "
                f"{f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['errors']:7.0f}"
            )
    for result in idle:
        print(json.dumps(result))
    # Express Gateway's own errors (its timeouts at 256 connections) are figures, not a failure.
    failed = any(
        f["errors"] for summary in summaries.values() for t, f in summary.items() if t != EXPRESS_GATEWAY
    )
    if partial:
        return 1 if failed else 0
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "machine": info,
        "settings": settings,
        "loads": {load.key: load.title for load in loads},
        "summary": summaries,
        "idle": idle,
        "measurements": [asdict(m) for m in measurements],
    }
    (args.out / "bench.json").write_text(json.dumps(figures, indent=2) + "\n")
    title = (
        f"mitmgateway vs bare mitmdump and Express Gateway: {info['cpu']}, {info['cores']} cores, "
        f"mitmproxy {info['mitmproxy']}; median of {args.rounds} rounds"
    )
    chart(summaries, idle, title, args.out / "bench.png")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
