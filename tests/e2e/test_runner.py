"""The lean runner (`mitmgateway run`, `--workers`), `mitmgateway check`, and graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import one_pipeline
from harness import BIN, Reply, admin_get, free_port, listening_pids, send, wait_until


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mitmgateway"), "check", "-c", str(config)], capture_output=True, text=True, timeout=30
    )


def test_check_summarizes_a_valid_config(tmp_path, walkthrough_config):
    config = tmp_path / "gateway.config.yml"
    config.write_text(walkthrough_config(8080))
    result = check(config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{config}: OK" in out
    assert "listens on http://127.0.0.1:8080" in out
    assert "paths: mergeSlashes true, escapedSlashes reject, dotSegments reject, semicolons reject" in out
    assert "customers (host customers.local) → customers: rate-limit → jwt → proxy" in out
    assert "orders (host orders.local) → orders: rate-limit → jwt → proxy" in out
    assert "serviceEndpoints" in out and "customers: http://127.0.0.1:" in out


def test_check_shows_the_path_rules_chosen(tmp_path, walkthrough_config):
    config = tmp_path / "gateway.config.yml"
    config.write_text(walkthrough_config(8080) + "paths: {escapedSlashes: keep, dotSegments: resolve}\n")
    result = check(config)
    assert result.returncode == 0, result.stderr
    chosen = "paths: mergeSlashes true, escapedSlashes keep, dotSegments resolve, semicolons reject"
    assert chosen in result.stdout
    config.write_text(walkthrough_config(8080) + "paths: {escapedSlashes: decode}\n")
    result = check(config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{config}:28:9: paths.escapedSlashes: must be one of 'reject', 'keep'")


def test_check_reports_every_error_with_file_key_path_and_reason(tmp_path, walkthrough_config):
    config = tmp_path / "gateway.config.yml"
    text = walkthrough_config(8080).replace("max: 1,", "max: many,", 1)
    text = text.replace("serviceEndpoint: orders", "serviceEndpoint: billing")
    config.write_text(text)
    result = check(config)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{config}:19:32: pipelines.customers.policies[0].rate-limit[0].action.max: "
        "must be an integer, got string 'many'",
        f"{config}:27:27: pipelines.orders.policies[2].proxy[0].action.serviceEndpoint: "
        "unknown serviceEndpoint 'billing' (declared: customers, orders)",
    ]


def test_lean_runner_serves_the_walkthrough(start_gateway, walkthrough_config, token, upstreams):
    gateway = start_gateway(walkthrough_config, runner="mitmgateway")
    assert gateway.send(host="customers.local").status == 401
    limited = gateway.send(host="customers.local")
    assert (limited.status, limited.text) == (429, "Too many requests, please try again later.")
    time.sleep(1.05)
    ok = gateway.send("/c", host="customers.local", headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200
    assert ok.body and b'"service": "customers"' in ok.body


def test_workers_share_one_port_and_a_dead_worker_is_replaced(start_gateway, upstreams):
    config = one_pipeline(upstreams["customers"].url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    gateway = start_gateway(config, runner="mitmgateway", workers=2)
    workers = wait_until(lambda: len(pids := listening_pids(gateway.port)) == 2 and pids, timeout=20)
    assert workers and gateway.process.pid not in workers, "expected two worker processes on the port"
    assert all(gateway.send(f"/{i}").status == 200 for i in range(20))

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(
        lambda: len(pids := listening_pids(gateway.port)) == 2 and victim not in pids and pids, timeout=20
    )
    assert replaced, "the pool did not replace the killed worker"
    assert all(gateway.send(f"/{i}").status == 200 for i in range(10))
    assert gateway.stop() == 0
    assert not listening_pids(gateway.port)

    # One format for the pool and its workers, each line saying who speaks.
    stamp = r"\[\d\d:\d\d:\d\d\.\d{3}\] "
    log = gateway.log()
    for slot in (1, 2):
        assert re.search(rf"^{stamp}worker {slot}: serving {re.escape(str(gateway.config))}: ", log, re.M)
    died = re.search(
        rf"^{stamp}pool: worker ([12]) \(pid {victim}\) was killed by SIGKILL; starting a new one$", log, re.M
    )
    assert died, log
    # The replacement speaks for the same slot: three workers said they serve, two of them slot N.
    assert len(re.findall(rf"^{stamp}worker {died[1]}: serving ", log, re.M)) == 2


def admin_ready(port: int) -> int:
    return admin_get(port, "/ready")[0]


def _send_in_background(port: int, path: str) -> tuple[threading.Thread, list[Reply | BaseException]]:
    result: list[Reply | BaseException] = []

    def run() -> None:
        try:
            result.append(send(port, path))
        except BaseException as e:  # the test reports it
            result.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("runner,workers", [("mitmdump", 1), ("mitmgateway", 1), ("mitmgateway", 2)])
def test_sigterm_finishes_requests_in_flight_then_exits_0(start_gateway, upstreams, runner, workers):
    admin_port = free_port()
    config = one_pipeline(
        upstreams["orders"].url,
        "- proxy: [{action: {serviceEndpoint: backend}}]",
        extra=f"admin: {{port: {admin_port}}}\n",
    )
    gateway = start_gateway(config, runner=runner, workers=workers)
    assert wait_until(lambda: admin_ready(admin_port) == 200, timeout=20)
    if workers > 1:
        assert wait_until(lambda: len(listening_pids(gateway.port)) == workers, timeout=20)
    thread, result = _send_in_background(gateway.port, "/slow?delay=1.5")
    time.sleep(0.5)  # the request is at the upstream now
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: _refuses_connections(gateway.port), timeout=3), "still accepting after SIGTERM"
    assert admin_ready(admin_port) == 503, "a draining gateway must not be ready"
    thread.join(timeout=10)
    (reply,) = result
    assert isinstance(reply, Reply), reply
    assert reply.status == 200 and b'"path": "/slow?delay=1.5"' in reply.body
    assert gateway.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5, "exit should follow the last response, not a timeout"
    if workers == 1:
        assert "waiting up to 30s for 1 request(s) in flight" in gateway.log()


def test_shutdown_timeout_bounds_the_wait(start_gateway, upstreams):
    config = one_pipeline(upstreams["orders"].url, "- proxy: [{action: {serviceEndpoint: backend}}]")
    gateway = start_gateway(config, runner="mitmgateway", options=("gateway_shutdown_timeout=1",))
    thread, result = _send_in_background(gateway.port, "/slow?delay=5")
    time.sleep(0.5)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=10) == 0
    assert 1 <= time.monotonic() - started < 4
    thread.join(timeout=10)
    assert not isinstance(result[0], Reply) or result[0].status != 200
    assert "shutting down with 1 request(s) still in flight" in gateway.log()


def test_the_lean_masters_dispatch_follows_addons_as_they_come_and_go():
    from mitmproxy import options
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
    from mitmproxy.test import tflow

    from mitmgateway.runner import GatewayMaster

    seen: list[str] = []

    class First:
        def requestheaders(self, flow) -> None:  # type: ignore[no-untyped-def]
            seen.append("first")

    class Second:
        async def requestheaders(self, flow) -> None:  # type: ignore[no-untyped-def]
            seen.append("second")

    async def main() -> None:
        master = GatewayMaster(options.Options())
        first = First()
        master.addons.add(first)
        flow = tflow.tflow()
        await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
        master.addons.remove(first)
        master.addons.add(Second())
        await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
        await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))

    asyncio.run(main())
    assert seen == ["first", "second", "second"]
