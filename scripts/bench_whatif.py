"""What-if replay speed: recorded walkthrough flows decided again under two configs, beside the
live gateway's cost per request, measured in one run.

Starts nginx as the upstream, serves the walkthrough config with one lean worker, and loads it
with wrk (a mix: requests to both services, one in ten without a token): first as is, for the
live rate, then with ``gateway_record`` on until it holds --flows flows. Then times
``mitmgateway whatif`` on those flows with, as the candidate, the recorded config with rate-limit
moved after jwt: alone (before: the recorded decisions), and with the recorded config as
``--baseline``: flows per second through two configs, and per config, and the ratio of a replayed
flow's cost to a live request's. Writes whatif.json beside
the benchmark's other figures.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mitmproxy import http, io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_targets import Bench, machine
from processes import BIN, ROOT, gateway_command, stop, wait_for_port

MIXED = """
local n = 0
request = function()
  n = n + 1
  local headers = {}
  headers["Host"] = (n % 2 == 0) and "customers.local" or "orders.local"
  if n % 10 ~= 0 then headers["Authorization"] = "Bearer " .. os.getenv("TOKEN") end
  return wrk.format("GET", "/items/" .. n, headers)
end
"""


def wrk_mixed(port: int, token: str, seconds: float, script: Path) -> float:
    """Requests per second of the mixed load."""
    command = ["wrk", "-t1", "-c16", f"-d{round(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}/"]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env={"TOKEN": token, "PATH": "/usr/bin:/bin"}
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def rate_limit_after_jwt(config: str) -> str:
    """The walkthrough with each pipeline's rate-limit step moved after its jwt step."""
    lines = config.splitlines(keepends=True)
    for i, line in enumerate(lines[:-1]):
        if "- rate-limit:" in line and "- jwt:" in lines[i + 1]:
            lines[i], lines[i + 1] = lines[i + 1], line
    return "".join(lines)


def keep_first(recording: Path, count: int) -> int:
    """Cut the recording to its first `count` flows; how many it holds."""
    with open(recording, "rb") as f:
        flows = [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)][:count]
    with open(recording, "wb") as f:
        writer = io.FlowWriter(f)
        for flow in flows:
            writer.add(flow)
    return len(flows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5, help="of load for the live rate")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mitmgateway-whatif-bench-") as tmp:
        work = Path(tmp)
        bench = Bench(work, 1)
        config = work / "gateway.config.yml"
        candidate = work / "candidate.yml"
        candidate.write_text(rate_limit_after_jwt(config.read_text()))
        script = work / "mixed.lua"
        script.write_text(MIXED)
        recording = work / "walkthrough.mitm"
        upstream = bench.start_upstream()
        try:
            serve = gateway_command("mitmgateway", config, work / "mitmproxy")
            gateway = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for_port(bench.port, gateway)
                wrk_mixed(bench.port, bench.token, 1, script)  # warm up
                live_rps = wrk_mixed(bench.port, bench.token, args.seconds, script)
            finally:
                stop(gateway)
            time.sleep(0.3)
            gateway = subprocess.Popen(
                [*serve, "--set", f"gateway_record={recording}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(bench.port, gateway)
                # Enough load for the flows asked for, at the rate just measured (recording costs:
                # up to half the rate on a busy machine).
                wrk_mixed(bench.port, bench.token, args.flows / live_rps * 2.2 + 1, script)
            finally:
                stop(gateway)
        finally:
            stop(upstream)
        flows = keep_first(recording, args.flows)
        report = work / "report.json"
        command = [str(BIN / "mitmgateway"), "whatif", str(recording), "-c", str(candidate)]
        started = time.perf_counter()
        alone = subprocess.run(command, capture_output=True, text=True)
        one_config = time.perf_counter() - started
        started = time.perf_counter()
        run = subprocess.run(
            [*command, "--baseline", str(config), "--json", str(report)], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - started
        if run.returncode not in (0, 1) or alone.returncode not in (0, 1):
            print(run.stderr, alone.stderr, file=sys.stderr)
            return 1
        changed = len(json.loads(report.read_text()))
    two_configs, one = flows / elapsed, flows / one_config
    figures = {
        "machine": machine(),
        "settings": {
            "flows": flows,
            "seconds": args.seconds,
            "load": "wrk -t1 -c16, mixed walkthrough requests",
        },
        "live_requests_per_second": live_rps,
        "two_configs_seconds": elapsed,
        "flows_per_second_two_configs": two_configs,
        "decisions_per_second_two_configs": 2 * two_configs,
        "one_config_seconds": one_config,
        "flows_per_second_one_config": one,
        # End to end (reading the file, starting Python), one config against a live request.
        "replayed_flow_cost_vs_live_request": live_rps / one,
        "changed_requests": changed,
    }
    print(run.stdout.splitlines()[1] if run.stdout else "")
    print(
        f"{flows:,} recorded walkthrough flows through a baseline and a candidate (rate-limit after jwt): "
        f"{elapsed:.2f} s, {two_configs:,.0f} flows/s through both configs at once "
        f"({2 * two_configs:,.0f} decisions/s)\n"
        f"the candidate alone (before: the decisions recorded): {one_config:.2f} s, {one:,.0f} flows/s\n"
        f"live gateway (1 lean worker, same load): {live_rps:,.0f} req/s; a flow replayed through one "
        f"config, end to end, costs {live_rps / one:.2f}x a live request"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whatif.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out / 'whatif.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
