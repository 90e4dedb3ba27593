"""Load and soak run of a real gateway: bodies byte for byte, the right pipeline, bounded memory.

Starts two demo upstreams and `mitmdump -s addons/gateway.py` (or the lean runner) on 127.0.0.1
with two pipelines (rate-limit by client IP, jwt with ES256, request-transformer marking the
pipeline and the config generation, proxy). Client threads then send a fixed number of POSTs,
each from its own loopback address (127.1.x.y) with its own token and a random body (some over
1 MiB, which stream), while the config is rewritten: valid new generations, and once a
half-written file. Every answer must be a 200 from the right pipeline's upstream with the body's
SHA-256; the gateway's memory (RSS) is sampled as the rate-limit store and the token cache fill.
Prints a JSON report; exits 1 when a check fails.

  scripts/soak                       # the long run: 30,000 requests
  scripts/soak --requests 1500       # what the test suite runs
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gen_keys import generate
from mint_token import mint
from processes import free_port, gateway_command, rss_bytes, start_upstream, stop, wait_for_port

PIPELINES = {"customers.local": "customers", "orders.local": "orders"}

CONFIG = """\
http: {{port: {port}, hostname: 127.0.0.1}}
apiEndpoints:
  customers: {{host: customers.local}}
  orders: {{host: orders.local}}
serviceEndpoints:
  customers: {{url: '{customers}'}}
  orders: {{url: '{orders}'}}
rateLimitStore: {{type: memory, maxKeys: {max_keys}}}
policies: [rate-limit, jwt, request-transformer, proxy]
pipelines:
"""
PIPELINE = """\
  {name}:
    apiEndpoints: [{name}]
    policies:
      - rate-limit: [{{action: {{max: 1000, windowMs: 600000}}}}]
      - jwt: [{{action: {{secretOrPublicKeyFile: {public_key}, checkCredentialExistence: false}}}}]
      - request-transformer:
          - action: {{headers: {{add: {{X-Pipeline: "'{name}'", X-Generation: "'{generation}'"}}}}}}
      - proxy: [{{action: {{serviceEndpoint: {name}}}}}]
"""


@dataclass
class Report:
    requests: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    generations_written: int = 0
    generations_seen: list[str] = field(default_factory=list)
    half_written_refused: bool = False
    streamed_bodies: int = 0
    rss_mib: list[tuple[int, float]] = field(default_factory=list)
    """(requests done, gateway RSS in MiB) samples."""
    seconds: float = 0.0

    @property
    def rss_growth_at_end_mib(self) -> float:
        """RSS growth over the last quarter of the run: with more distinct clients and tokens
        than the rate-limit store and the token caches hold, they are full by then."""
        last = [mib for done, mib in self.rss_mib if done >= self.requests * 3 // 4]
        return max(last) - last[0] if last else 0.0


def render(port: int, upstreams: dict[str, str], public_key: Path, max_keys: int, generation: int) -> str:
    text = CONFIG.format(port=port, max_keys=max_keys, **upstreams)
    for name in upstreams:
        text += PIPELINE.format(name=name, public_key=public_key, generation=generation)
    return text


def rss_mib(pid: int) -> float:
    return rss_bytes(pid) / (1 << 20)


def client_address(n: int) -> str:
    """A distinct loopback source address per request (127.1.0.1 and up)."""
    return f"127.{1 + n // 65024}.{(n // 254) % 256}.{1 + n % 254}"


def send(port: int, host: str, token: str, body: bytes, source: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", "/soak", body, {"Host": host, "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if response.status == 200 else {"raw": payload[:200]}
    finally:
        conn.close()


def run(
    requests: int, threads: int = 6, max_keys: int = 500, reloads: int = 6, runner: str = "mitmdump"
) -> Report:
    report = Report(requests=requests)
    work = Path(tempfile.mkdtemp(prefix="mitmgateway-soak-"))
    private_key, public_key = generate(work, "ec")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstreams = {}
        for name in PIPELINES.values():
            process, port = start_upstream(name)
            processes.append(process)
            upstreams[name] = f"http://127.0.0.1:{port}"
        port = free_port()
        config = work / "gateway.config.yml"
        config.write_text(render(port, upstreams, public_key, max_keys, 0))
        log = work / "gateway.log"
        command = gateway_command(runner, config, work / "confdir")
        with log.open("wb") as output:
            gateway = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=work)
        processes.append(gateway)
        wait_for_port(port, gateway, log)

        tokens = [mint(private_key, f"client-{n}") for n in range(requests)]
        done = [0]
        lock = threading.Lock()
        stop_reloading = threading.Event()

        def reload_config() -> None:
            interval = 1.0
            for generation in range(1, reloads + 1):
                if stop_reloading.wait(interval):
                    return
                text = render(port, upstreams, public_key, max_keys, generation)
                if generation == reloads // 2:
                    # A half-written file (an editor or a copy caught mid-write), then the whole.
                    config.write_text(text[: len(text) // 2])
                    time.sleep(0.6)
                config.write_text(text)
                report.generations_written = generation

        def load(worker: int) -> None:
            rng = random.Random(worker)
            for n in range(worker, requests, threads):
                host = rng.choice(list(PIPELINES))
                size = (3 << 19) if n % 97 == 0 else rng.randrange(0, 64 << 10)
                body = rng.randbytes(size)
                try:
                    status, echoed = send(port, host, tokens[n], body, client_address(n))
                except (OSError, http.client.HTTPException) as e:
                    failure = f"request {n}: {e!r}"
                else:
                    failure = check(n, host, body, status, echoed)
                with lock:
                    if failure:
                        report.failures.append(failure)
                    else:
                        report.ok += 1
                        report.streamed_bodies += size > 1 << 20
                        generation = echoed["headers"].get("X-Generation", "?")
                        if generation not in report.generations_seen:
                            report.generations_seen.append(generation)
                    done[0] += 1
                    if done[0] % 250 == 0:
                        report.rss_mib.append((done[0], round(rss_mib(gateway.pid), 1)))

        started = time.monotonic()
        reloader = threading.Thread(target=reload_config)
        reloader.start()
        workers = [threading.Thread(target=load, args=(w,)) for w in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        stop_reloading.set()
        reloader.join()
        report.seconds = round(time.monotonic() - started, 1)
        report.rss_mib.append((requests, round(rss_mib(gateway.pid), 1)))
        report.half_written_refused = "config change refused" in log.read_text()
    finally:
        for process in processes:
            stop(process)
    if not report.failures:  # else the gateway's log stays for a look
        shutil.rmtree(work, ignore_errors=True)
    return report


def check(n: int, host: str, body: bytes, status: int, echoed: dict) -> str | None:
    if status != 200:
        return f"request {n} to {host}: status {status} {echoed}"
    pipeline = PIPELINES[host]
    if echoed["service"] != pipeline or echoed["headers"].get("X-Pipeline") != pipeline:
        via = echoed["headers"].get("X-Pipeline")
        return f"request {n} to {host}: answered by {echoed['service']} via pipeline {via}"
    if echoed["bodySha256"] != hashlib.sha256(body).hexdigest():
        return (
            f"request {n} to {host}: body of {len(body)} bytes arrived as {echoed['bodyLength']} other bytes"
        )
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--max-keys", type=int, default=5000, help="rateLimitStore.maxKeys")
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--runner", choices=["mitmdump", "mitmgateway"], default="mitmdump")
    parser.add_argument(
        "--max-growth-mib", type=float, default=32.0, help="RSS growth allowed in the second half"
    )
    args = parser.parse_args()
    report = run(args.requests, args.threads, args.max_keys, args.reloads, args.runner)
    print(json.dumps({**asdict(report), "rssGrowthAtEndMiB": report.rss_growth_at_end_mib}, indent=1))
    passed = (
        not report.failures
        and report.ok == args.requests
        and report.half_written_refused
        and report.rss_growth_at_end_mib <= args.max_growth_mib
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
