"""Every command the README shows, run as written in a fresh copy of the checkout after its quick
start: each fenced `sh` line and the commands quoted in its text. A command added to the README
that this file does not judge fails the first test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mitmproxy import io

from harness import ROOT, free_port, send, wait_for_port, wait_until
from processes import listening

README = (ROOT / "README.md").read_text()
THIS_SUITE = "scripts/test"
INLINE = ("scripts/demo --check", "scripts/demo --web")
"""Commands the README quotes in its text rather than in a fenced block (and `. .venv/bin/activate`,
judged by the test of its own below)."""


def fenced_commands(text: str) -> list[str]:
    """The lines of the README's ```sh blocks, without their trailing comments."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(re.sub(r"\s+", " ", command))
    return commands


@dataclass
class Checkout:
    """A fresh copy of the checkout (its tracked and new files) sharing this one's .venv."""

    path: Path
    env: dict[str, str]

    @property
    def gateway_port(self) -> int:
        return int(self.env["GATEWAY_PORT"])

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        # exec: the PID is the command's own, which gets the signals.
        with log.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.path,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    path = tmp_path_factory.mktemp("clone") / "mitmgateway"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (path / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / os.fsdecode(name))
    # The copy shares this checkout's .venv. What the commands install into it (scripts/setup,
    # scripts/bench's chart library) is installed from this checkout first: the copy's own
    # scripts/setup then finds it done, and never points the venv's editable install at the copy.
    subprocess.run([str(ROOT / "scripts" / "setup"), "bench"], check=True, capture_output=True, timeout=600)
    (path / ".venv").symlink_to(ROOT / ".venv")
    # A home of its own: mitmproxy's CA and options (mitmweb on a free port, no browser) go there.
    home = tmp_path_factory.mktemp("home")
    (home / ".mitmproxy").mkdir()
    (home / ".mitmproxy" / "config.yaml").write_text(f"web_port: {free_port()}\nweb_open_browser: false\n")
    ports = {name: str(free_port()) for name in ("GATEWAY_PORT", "CUSTOMERS_PORT", "ORDERS_PORT")}
    # Downloads (scripts/bench's Express Gateway) stay in the real home's cache.
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    env = {**os.environ, **ports, "HOME": str(home), "XDG_CACHE_HOME": cache, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    yield Checkout(path, env)


def serves(expected_exit: int = 0) -> Callable[[Checkout, str, Path], None]:
    """A server: it listens on the gateway port and answers as the demo config says (401 without
    a token), then stops on SIGTERM with `expected_exit`."""

    def judge(checkout: Checkout, command: str, log: Path) -> None:
        process = checkout.start(command, log)
        try:
            wait_for_port(checkout.gateway_port, process, log, timeout=60)
            assert send(checkout.gateway_port, host="customers.local").status == 401, log.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
        assert code == expected_exit, log.read_text()
        assert not listening(checkout.gateway_port)

    return judge


def serves_and_records(checkout: Checkout, command: str, log: Path) -> None:
    """A server that records: its flows read back from the file it names, owner-readable only."""
    serves()(checkout, command, log)
    recording = checkout.path / command.rpartition("gateway_record=")[2]
    assert stat.S_IMODE(recording.stat().st_mode) == 0o600
    with recording.open("rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert [f.metadata["gateway"]["answeredBy"] for f in flows] == ["jwt"]


def demo_serves(checkout: Checkout, command: str, log: Path) -> None:
    """scripts/demo: the walkthrough, then serving until Ctrl-C."""
    process = checkout.start(command, log)
    try:
        assert wait_until(lambda: "Serving until Ctrl-C" in log.read_text(), timeout=300), log.read_text()
        assert send(checkout.gateway_port, host="customers.local").status in (401, 429)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "customers.local  no token" in log.read_text()
    assert not listening(checkout.gateway_port)


def succeeds(*expected: str, exit_code: int = 0) -> Callable[[Checkout, str, Path], None]:
    """Runs to its end with `exit_code`, saying each of `expected`."""

    def judge(checkout: Checkout, command: str, log: Path) -> None:
        result = checkout.run(command, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == exit_code, output
        for text in expected:
            assert text in output, output

    return judge


def consumers_file_is_private(checkout: Checkout, command: str, log: Path) -> None:
    succeeds("partner-acme")(checkout, command, log)
    mode = stat.S_IMODE((checkout.path / "consumers.yml").stat().st_mode)
    assert mode == 0o600, oct(mode)


def echo_service(checkout: Checkout, command: str, log: Path) -> None:
    port = int(command.split()[-1])
    if listening(port):
        pytest.skip(f"port {port}, which the README's command names, is taken on this machine")
    process = checkout.start(command, log)
    try:
        wait_for_port(port, process, log)
        assert '"service": "orders"' in send(port, "/x").text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def records_the_demo(checkout: Checkout, command: str, log: Path) -> None:
    succeeds("recorded ")(checkout, command, log)
    recording = checkout.path / "logs" / "walkthrough.mitm"
    assert stat.S_IMODE(recording.stat().st_mode) == 0o600
    with recording.open("rb") as f:
        assert len(list(io.FlowReader(f).stream())) >= 5


def reports_what_changes(checkout: Checkout, command: str, log: Path) -> None:
    """The walkthrough's second anonymous request: 429 by rate-limit → 401 by jwt."""
    succeeds("customers: 429 by rate-limit → 401 by jwt", exit_code=1)(checkout, command, log)
    entries = json.loads((checkout.path / "logs" / "whatif.json").read_text())
    assert entries and all({"method", "host", "path", "before", "after"} <= e.keys() for e in entries)
    changed = checkout.path / "logs" / "changed.mitm"
    assert stat.S_IMODE(changed.stat().st_mode) == 0o600
    with changed.open("rb") as f:
        assert len(list(io.FlowReader(f).stream())) == len(entries)


CONSUMERS = ".venv/bin/mitmgateway consumers"
WHATIF = ".venv/bin/mitmgateway whatif"
JUDGES: dict[str, Callable[[Checkout, str, Path], None] | None] = {
    "scripts/demo": demo_serves,
    THIS_SUITE: None,
    "scripts/demo --check": succeeds("with a valid token, after the window   -> 200"),
    "scripts/demo --web": demo_serves,
    ".venv/bin/mitmdump -s addons/gateway.py": serves(),
    ".venv/bin/mitmdump -s addons/gateway.py --set gateway_record=logs/traffic.mitm": serves_and_records,
    ".venv/bin/mitmdump -s addons/gateway.py --set gateway_config=/etc/gw.yml": succeeds(
        "invalid gateway config: /etc/gw.yml: cannot read the file", exit_code=1
    ),
    ".venv/bin/mitmweb -s addons/gateway.py": serves(),
    ".venv/bin/mitmgateway run -c gateway.config.yml": serves(),
    ".venv/bin/mitmgateway run -c gateway.config.yml --workers 2": serves(),
    ".venv/bin/mitmgateway run -c gateway.config.yml --shadow "
    "examples/whatif/rate-limit-after-jwt.yml": serves(),
    ".venv/bin/mitmgateway check -c gateway.config.yml": succeeds("gateway.config.yml: OK"),
    f"{CONSUMERS} users create -p username=partner-acme -p firstname=Acme -p lastname=Partner": (
        consumers_file_is_private
    ),
    f"{CONSUMERS} credentials create -c partner-acme -t key-auth": succeeds('"keySecret": '),
    f"{CONSUMERS} credentials create -c partner-acme -t basic-auth": succeeds('"password": '),
    f"{CONSUMERS} credentials create -c partner-acme -t jwt -p keyId=acme-service@idp.example.com": succeeds(
        '"keyId": "acme-service@idp.example.com"'
    ),
    f"{CONSUMERS} users list": succeeds('"username": "partner-acme"'),
    f"{CONSUMERS} users deactivate partner-acme": succeeds("Deactivated"),
    ".venv/bin/python scripts/consumers.py users activate partner-acme": succeeds("Activated"),
    ".venv/bin/mitmgateway admin-token": succeeds("admin API token (shown once): ", "tokenHash: sha256:"),
    ".venv/bin/python scripts/gen_keys.py": succeeds("private key: keys/privKey.pem"),
    ".venv/bin/python scripts/mint_token.py --sub demo-user": succeeds("eyJ"),
    ".venv/bin/python scripts/demo_upstream.py orders 9002": echo_service,
    "scripts/bench --rounds 5 --seconds 5": succeeds("x mitmdump", "wrote "),
    "scripts/soak --requests 30000 --runner mitmgateway": succeeds('"failures": []'),
    "scripts/demo --record logs/walkthrough.mitm --seconds 60": records_the_demo,
    f"{WHATIF} logs/walkthrough.mitm -c examples/whatif/rate-limit-after-jwt.yml --json logs/whatif.json "
    "--changed logs/changed.mitm": reports_what_changes,
    f"{WHATIF} --cases examples/whatif/cases.yml -c gateway.config.yml": succeeds("7 passed, 0 failed"),
    "scripts/bench whatif": succeeds("flows/s through both configs", "wrote "),
}
SHORTENED = {
    # The same commands with less load: the README's run for minutes.
    "scripts/bench --rounds 5 --seconds 5": "scripts/bench --rounds 1 --seconds 1 --idle-clients 100",
    "scripts/bench whatif": "scripts/bench whatif --flows 300 --seconds 1",
    "scripts/demo --record logs/walkthrough.mitm --seconds 60": (
        "scripts/demo --record logs/walkthrough.mitm --seconds 3"
    ),
    "scripts/soak --requests 30000 --runner mitmgateway": (
        "scripts/soak --requests 1500 --reloads 4 --max-keys 300 --runner mitmgateway"
    ),
}
# In the README's order, the quick start first (it makes the keys the others use), then the demo's
# variants its text quotes.
ORDERED = [*fenced_commands(README)[:2], *INLINE, *fenced_commands(README)[2:]]


def test_every_command_the_readme_shows_is_judged_here():
    for command in INLINE:
        assert f"`{command}`" in README, f"the README no longer quotes {command!r}"
    assert set(fenced_commands(README)) | set(INLINE) == set(JUDGES)


@pytest.mark.parametrize("command", ORDERED)
def test_readme_command_runs_as_written(checkout, tmp_path, command):
    judge = JUDGES[command]
    if judge is None:
        pytest.skip("the suite running this test")
    judge(checkout, SHORTENED.get(command, command), tmp_path / "output.log")


def test_after_activating_the_venv_the_prefix_can_be_left_out(checkout):
    assert "`. .venv/bin/activate`" in README
    result = checkout.run(". .venv/bin/activate && mitmgateway check -c gateway.config.yml")
    assert result.returncode == 0, result.stderr
    assert "gateway.config.yml: OK" in result.stdout
