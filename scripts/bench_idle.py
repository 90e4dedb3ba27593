"""Many idle clients: what each costs a gateway, and how many upstream connections they hold.

For each target (bare `mitmdump --mode reverse`, one lean worker with the walkthrough's pipeline,
and Express Gateway, as scripts/bench_targets.py runs them): opens N keep-alive client
connections, sends one request on each, and leaves them open and idle. Reports the target's
resident memory per idle client (RSS after minus before, over N), and the upstream connections
it holds right after and once its idle timeout has passed (counted from /proc/net/tcp:
established connections to nginx's port). `scripts/bench` runs this after its loads and keeps the
figures in docs/bench/bench.json; `scripts/bench idle` runs only this and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_targets import BASELINE, EXPRESS_GATEWAY, HOST, Bench, stop_target
from processes import rss_bytes

IDLE_TARGETS = (BASELINE, "lean runner, 1 worker", EXPRESS_GATEWAY)
SETTLE_SECONDS = 6.0
"""Longer than the gateway's default upstream idle timeout (4 s) and its reaper's half second."""
WAVE = 200
WAVE_SECONDS = 3.0
"""Longer than the gateway takes to set an idle client aside (2 s, swept every half second)."""


def established_to(port: int) -> int:
    """Established TCP connections whose remote port is `port` (IPv4, this machine)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01":
            count += 1
    return count


async def open_idle_clients(port: int, token: str, clients: int) -> list[asyncio.StreamWriter]:
    request = f"GET /customers HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    writers: list[asyncio.StreamWriter] = []
    semaphore = asyncio.Semaphore(64)

    async def one() -> None:
        async with semaphore:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(clients)))
    return writers


def arrivals(clients: int, wave: int) -> tuple[int | None, ...]:
    """All at once, then in waves; only all at once when they fit in one wave (the same arrival)."""
    return (None, wave) if clients > wave else (None,)


def still_open(writers: list[asyncio.StreamWriter]) -> int:
    """Clients whose connection the target has not closed (Node closes idle ones after 5 s)."""
    return sum(1 for w in writers if not w.is_closing() and not w._reader.at_eof())  # type: ignore[attr-defined]


def measure_idle(bench: Bench, target: str, clients: int, wave: int | None = None) -> dict[str, object]:
    """`wave` None: all `clients` at once, 64 at a time, measured 0.5 s after the last answer (the
    peak: a process's heap does not give back what it freed since). `wave` N: N clients at a time,
    WAVE_SECONDS apart, measured once the last wave has been idle SETTLE_SECONDS (what a crowd that
    arrives over time costs: the memory of those no longer served is reused by those arriving)."""
    process = bench.start(target)
    assert process is not None
    try:
        time.sleep(1.0)
        before = rss_bytes(process.pid) // 1024

        async def run() -> dict[str, object]:
            writers: list[asyncio.StreamWriter] = []
            if wave is None:
                writers = await open_idle_clients(bench.port, bench.token, clients)
                await asyncio.sleep(0.5)
            else:
                while len(writers) < clients:
                    arriving = min(wave, clients - len(writers))
                    writers += await open_idle_clients(bench.port, bench.token, arriving)
                    await asyncio.sleep(WAVE_SECONDS)
            measured = rss_bytes(process.pid) // 1024
            held = established_to(bench.upstream_port)
            await asyncio.sleep(SETTLE_SECONDS)
            settled = established_to(bench.upstream_port)
            if wave is not None:
                measured = rss_bytes(process.pid) // 1024
            connected = still_open(writers)
            for writer in writers:
                writer.close()
            return {
                "target": target,
                "clients": clients,
                "arrival": "all at once" if wave is None else f"{wave} every {WAVE_SECONDS:g} s",
                "still_connected": connected,
                "rss_kib_before": before,
                "rss_kib_after": measured,
                "kib_per_idle_client": round((measured - before) / clients, 1),
                "upstream_connections_after_requests": held,
                "idle_seconds": SETTLE_SECONDS,
                "upstream_connections_after_idle": settled,
            }

        return asyncio.run(run())
    finally:
        stop_target(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=WAVE, help="clients arriving together, in the second run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mitmgateway-bench-idle-") as tmp:
        bench = Bench(Path(tmp), workers=1)
        upstream = bench.start_upstream()
        try:
            for target in IDLE_TARGETS:
                if target in bench.targets:
                    for wave in arrivals(args.clients, args.wave):
                        print(json.dumps(measure_idle(bench, target, args.clients, wave)), flush=True)
        finally:
            stop_target(upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
