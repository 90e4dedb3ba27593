#!/usr/bin/env python3
"""The demo behind scripts/demo: keys, two upstream services, the gateway, the walkthrough."""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from gen_keys import generate  # noqa: E402
from mint_token import mint  # noqa: E402
from processes import listening, stop, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent
GATEWAY_PORT = int(os.environ.get("GATEWAY_PORT", "8080"))
SERVICES = {
    "customers": int(os.environ.get("CUSTOMERS_PORT", "9001")),
    "orders": int(os.environ.get("ORDERS_PORT", "9002")),
}


class Relay:
    """The children's output, each line labelled with who wrote it (`gateway │ ...`), held back
    while the walkthrough prints so that its lines stay together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[str] | None = None
        self._width = max(len(name) for name in [*SERVICES, "gateway"])

    def start(self, name: str, command: list[str]) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._follow, args=(name, child), daemon=True).start()
        return child

    def _follow(self, name: str, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            self._say(f"{name:>{self._width}} │ {line.rstrip()}")

    def _say(self, line: str) -> None:
        with self._lock:
            if self._held is None:
                print(line, flush=True)
            else:
                self._held.append(line)

    @contextmanager
    def held(self, show: bool = True) -> Iterator[None]:
        """Hold the children's lines back meanwhile, then show them (or, `show` false, drop
        them: a minute of recorded traffic logs a line per request)."""
        with self._lock:
            self._held = []
        try:
            yield
        finally:
            with self._lock:
                held, self._held = self._held or [], None
            if held and show:
                print("\nMeanwhile, in the logs:", flush=True)
                print("\n".join(held), flush=True)


def wait_listening(port: int, process: subprocess.Popen[str], what: str) -> None:
    try:
        wait_for_port(port, process)
    except (RuntimeError, TimeoutError):
        sys.exit(f"{what} did not start on port {port}")


def call(host: str, headers: dict[str, str] | None = None, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=5)
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    response = conn.getresponse()
    body = response.read().decode(errors="replace")
    conn.close()
    return response.status, body


def walkthrough(token: str) -> bool:
    steps = [
        ("no token", "customers.local", {}, 401),
        ("again within the second", "customers.local", {}, 429),
        ("with a valid token, after the window", "orders.local", {"Authorization": f"Bearer {token}"}, 200),
    ]
    ok = True
    for label, host, headers, expected in steps:
        status, body = call(host, headers)
        print(f"  {host:16} {label:38} -> {status} {body[:70]}")
        ok &= status == expected
    return ok


def record_traffic(token: str, seconds: float) -> Counter[int]:
    """The walkthrough's kind of traffic for `seconds`, some three requests a second: customers and
    orders, with the token and without, on a few paths; how many got each status."""
    bearer = {"Authorization": f"Bearer {token}"}
    steps = [
        ("customers.local", {}, "/"),
        ("orders.local", bearer, "/orders/{n}"),
        ("customers.local", bearer, "/customers/{n}"),
        ("orders.local", {}, "/orders/{n}"),
        ("customers.local", bearer, "/customers/{n}/orders"),
    ]
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        host, headers, path = steps[n % len(steps)]
        statuses[call(host, headers, path.format(n=n // len(steps)))[0]] += 1
        n += 1
        time.sleep(0.4)
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the bundled demo")
    parser.add_argument("--web", action="store_true", help="run under mitmweb instead of mitmdump")
    parser.add_argument("--check", action="store_true", help="run the walkthrough once and exit")
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="record the walkthrough and --seconds of such traffic to FILE (gateway_record), then exit",
    )
    parser.add_argument("--seconds", type=float, default=60, help="of traffic --record makes (default 60)")
    args = parser.parse_args()

    os.chdir(ROOT)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # beside the relayed lines
    private_key, _ = generate(ROOT / "keys")
    children: list[subprocess.Popen[str]] = []
    relay = Relay()

    def cleanup(*_: object) -> None:
        # stop() falls back to SIGKILL, so one stuck child neither hangs the demo nor keeps
        # the others running.
        for child in reversed(children):
            stop(child, timeout=10)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for name, port in SERVICES.items():
            if listening(port):
                print(f"{name}: something already listens on 127.0.0.1:{port}; using it")
                continue
            child = relay.start(name, [sys.executable, "scripts/demo_upstream.py", name, str(port)])
            children.append(child)
            wait_listening(port, child, name)
        if listening(GATEWAY_PORT):
            sys.exit(f"port {GATEWAY_PORT} is taken: set GATEWAY_PORT to a free one")
        runner = "mitmweb" if args.web else "mitmdump"
        command = [str(BIN / runner), "-s", "addons/gateway.py"]
        if args.record:
            command += ["--set", f"gateway_record={args.record}"]
        gateway = relay.start("gateway", command)
        children.append(gateway)
        wait_listening(GATEWAY_PORT, gateway, "the gateway")

        token = mint(private_key, "demo-user")
        time.sleep(1.1)  # start the walkthrough on a fresh rate-limit window
        with relay.held():
            print("\nExpress Gateway's walkthrough through the gateway:", flush=True)
            ok = walkthrough(token)
        print("\nTry it yourself (the token is RS256, valid for one hour):")
        print(f"  TOKEN={token}")
        print(f"  curl -i -H 'Host: customers.local' http://127.0.0.1:{GATEWAY_PORT}/")
        print(
            f"  curl -i -H 'Host: orders.local' -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{GATEWAY_PORT}/"
        )
        print("  (.venv/bin/python scripts/mint_token.py prints a fresh token; edit gateway.config.yml live)")
        if args.check:
            sys.exit(0 if ok else 1)
        if args.record:
            print(f"\nRecording {args.seconds:g} s of such traffic to {args.record}...", flush=True)
            with relay.held(show=False):
                statuses = record_traffic(token, args.seconds)
            counts = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
            print(f"recorded {sum(statuses.values()) + 3} requests ({counts}, and the walkthrough's 3)")
            print(f"  .venv/bin/mitmgateway whatif {args.record} -c CANDIDATE.yml  replays them against it")
            sys.exit(0 if ok else 1)
        if args.web:
            print("\nmitmweb shows every flow at http://127.0.0.1:8081")
        print("\nServing until Ctrl-C; the gateway's log follows.", flush=True)
        gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cleanup()


if __name__ == "__main__":
    main()
