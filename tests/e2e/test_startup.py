"""What the gateway says when it starts, on each runner: one line naming the config and what it
serves, listeners in the gateway's words (never reverse mode's placeholder target), and a bad
config or a taken port ending the process before anything listens."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from harness import free_port
from processes import gateway_command

RUNNERS = [
    pytest.param("mitmdump", 1, id="mitmdump"),
    pytest.param("mitmweb", 1, id="mitmweb"),
    pytest.param("mitmgateway", 1, id="mitmgateway"),
    pytest.param("mitmgateway", 2, id="workers"),
]


def run_to_exit(config: Path, confdir: Path, runner: str, workers: int) -> subprocess.CompletedProcess[str]:
    command = gateway_command(runner, config, confdir, workers)
    if runner == "mitmweb":
        command += ["--set", "web_open_browser=false", "--set", f"web_port={free_port()}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=config.parent)


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_startup_names_the_config_and_what_it_serves(start_gateway, walkthrough_config, runner):
    gateway = start_gateway(walkthrough_config, runner=runner)
    assert gateway.send(host="customers.local").status == 401
    log = gateway.log()
    assert (
        f"serving {gateway.config}: http://127.0.0.1:{gateway.port}; 2 apiEndpoints → 2 pipelines "
        "(customers, orders); serviceEndpoints customers, orders" in log
    )
    assert f"gateway listening at 127.0.0.1:{gateway.port}." in log
    assert ".invalid" not in log


def test_one_of_each_is_said_in_the_singular(start_gateway, upstreams):
    gateway = start_gateway(
        # On loopback: a port free there (free_port) may be held on another address, and a
        # test has no business listening beyond this machine.
        "http: {port: {port}, hostname: 127.0.0.1}\n"
        "apiEndpoints: {api: {host: '*'}}\n"
        f"serviceEndpoints: {{backend: {{url: '{upstreams['orders'].url}'}}}}\n"
        "policies: [proxy]\n"
        "pipelines:\n"
        "  main: {apiEndpoints: [api], policies: [{proxy: [{action: {serviceEndpoint: backend}}]}]}\n"
    )
    assert "1 apiEndpoint → 1 pipeline (main); serviceEndpoints backend" in gateway.log()


@pytest.mark.parametrize(("runner", "workers"), RUNNERS)
def test_an_invalid_config_ends_the_process_before_anything_listens(tmp_path, confdir, runner, workers):
    config = tmp_path / "gateway.config.yml"
    config.write_text("http: {port: 0}\n")
    result = run_to_exit(config, confdir, runner, workers)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"invalid gateway config: {config}:1:8: http.port: must be a TCP port (1-65535), got 0" in output
    # mitmproxy's default proxy port neither opened nor offered as a way out.
    assert "listening" not in output
    assert "--mode" not in output


@pytest.mark.parametrize(("runner", "workers"), RUNNERS)
def test_a_taken_port_is_named_in_the_gateways_words(tmp_path, confdir, runner, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.config.yml"
        config.write_text(f"http: {{port: {port}, hostname: 127.0.0.1}}\napiEndpoints: {{}}\n")
        result = run_to_exit(config, confdir, runner, workers)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"gateway failed to listen on 127.0.0.1:{port}" in output
    assert ".invalid" not in output
