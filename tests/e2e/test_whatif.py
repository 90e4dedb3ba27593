"""What-if replay (mitmgateway whatif): traffic recorded by a running gateway (both runners) and by
plain mitmdump, decided again offline under edited configs; each kind of change is found, and
nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from mitmproxy import http, io

from harness import Gateway, bearer
from mitmgateway.whatif import cli as whatif
from processes import free_port, walkthrough_config

ROOT = Path(__file__).resolve().parents[2]
MITMGATEWAY = Path(sys.executable).with_name("mitmgateway")


def _traffic(gateway: Gateway, token: str) -> None:
    """Anonymous customers requests until the limit answers, then a valid one (limited too);
    orders with a token, then one without (past the limit); a host no apiEndpoint serves."""
    for i in range(4):
        # A browser's: without credentials recorded, the cookie goes (and the request had none).
        gateway.send(f"/c/{i}", host="customers.local", headers={"Cookie": "theme=dark"})
    gateway.send("/c/ok", host="customers.local", headers=bearer(token))
    for i in range(3):
        gateway.send(f"/o/{i}", host="orders.local", headers=bearer(token))
    gateway.send("/o/anonymous", host="orders.local")
    gateway.send("/nowhere", host="unknown.local")


@pytest.fixture(scope="module")
def config_text(upstreams, rsa_keys) -> Callable[[int], str]:  # type: ignore[no-untyped-def]
    def render(port: int) -> str:
        return walkthrough_config(
            port, upstreams["customers"].url, upstreams["orders"].url, rsa_keys[1], max_requests=3
        )

    return render


def _record(tmp: Path, config_text, token: str, runner: str, *options: str) -> Path:  # type: ignore[no-untyped-def]
    recording = tmp / "traffic.mitm"
    port = free_port()
    config = tmp / "gateway.config.yml"
    config.write_text(config_text(port))
    gateway = Gateway(
        config, port, tmp / "confdir", runner=runner, options=(f"gateway_record={recording}", *options)
    )
    try:
        _traffic(gateway, token)
    finally:
        assert gateway.stop() == 0
    return recording


@pytest.fixture(scope="module", params=["mitmdump", "mitmgateway"])
def recording(request, tmp_path_factory, config_text, token) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """(the recording, the config it was recorded under)."""
    tmp = tmp_path_factory.mktemp(f"recorded-{request.param}")
    return _record(tmp, config_text, token, request.param), tmp / "gateway.config.yml"


def whatif_run(capsys, *args: object) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    status = whatif.main([str(a) for a in args])
    return status, capsys.readouterr().out


def edited(config: Path, tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = config.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    candidate = tmp_path / "candidate.yml"
    candidate.write_text(text)
    return candidate


def changed_entries(capsys, recording: Path, candidate: Path, tmp_path: Path, *more: object) -> list[dict]:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.json"
    status, out = whatif_run(capsys, recording, "-c", candidate, "--json", report, *more)
    entries = json.loads(report.read_text())
    assert status == (1 if entries else 0), out
    return entries


def transitions(entries: list[dict]) -> list[tuple[str, str]]:
    return [(e["path"], e["transition"]) for e in entries]


def found_after(capsys, recording, tmp_path, *replacements: tuple[str, str]) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(path, transition) of each request the edited recording config changes."""
    flows, config = recording
    return transitions(changed_entries(capsys, flows, edited(config, tmp_path, *replacements), tmp_path))


def test_the_config_it_was_recorded_under_changes_nothing(capsys, recording, tmp_path):
    flows, config = recording
    status, out = whatif_run(capsys, flows, "-c", config)
    assert status == 0, out
    assert "10 requests replayed" in out and "10 unchanged, 0 changed, 0 indeterminate" in out
    # Deterministic: the same report on a second run.
    assert whatif_run(capsys, flows, "-c", config) == (0, out)


def test_a_routing_change_is_found_on_the_requests_it_moves(capsys, recording, tmp_path):
    flows, config = recording
    candidate = edited(config, tmp_path, ("serviceEndpoint: orders,", "serviceEndpoint: customers,"))
    entries = changed_entries(capsys, flows, candidate, tmp_path)
    assert transitions(entries) == [
        (f"/o/{i}", "orders: proxied 200 → proxied 200 (serviceEndpoint orders → customers)")
        for i in range(3)
    ]
    assert entries[0]["before"]["serviceEndpoint"] == "orders"
    assert entries[0]["after"] == {
        "status": 200,
        "apiEndpoint": "orders",
        "pipeline": "orders",
        "policy": None,
        "serviceEndpoint": "customers",
    }
    assert (entries[0]["method"], entries[0]["host"]) == ("GET", "orders.local")


def test_moving_the_rate_limit_after_jwt(capsys, recording, tmp_path):
    flows, config = recording
    text = config.read_text()
    rate_limit = "      - rate-limit: [{action: {max: 3, windowMs: 1000}}]\n"
    customers_jwt = text.split("pipelines:")[1].split("  orders:")[0]
    jwt_line = next(line for line in customers_jwt.splitlines(keepends=True) if "- jwt:" in line)
    moved = customers_jwt.replace(rate_limit, "").replace(jwt_line, jwt_line + rate_limit)
    candidate = tmp_path / "candidate.yml"
    candidate.write_text(text.replace(customers_jwt, moved))
    entries = changed_entries(capsys, flows, candidate, tmp_path)
    found = transitions(entries)
    # The first three anonymous requests lose the rate-limit headers (jwt now answers first),
    # the fourth is refused by jwt instead, and the valid one is no longer limited.
    assert found == [
        *((f"/c/{i}", "customers: 401 by jwt → 401 by jwt (response changed)") for i in range(3)),
        ("/c/3", "customers: 429 by rate-limit → 401 by jwt"),
        ("/c/ok", "customers: 429 by rate-limit → proxied ?"),
    ]


def test_a_new_auth_step(capsys, recording, tmp_path):
    found = found_after(
        capsys,
        recording,
        tmp_path,
        ("policies: [jwt, proxy, rate-limit]", "policies: [jwt, key-auth, proxy, rate-limit]"),
        (
            "  orders:\n    apiEndpoints: [orders]\n    policies:\n",
            "  orders:\n    apiEndpoints: [orders]\n    policies:\n      - key-auth: [{action: {}}]\n",
        ),
    )
    assert found == [
        *((f"/o/{i}", "orders: proxied 200 → 401 by key-auth") for i in range(3)),
        ("/o/anonymous", "orders: 429 by rate-limit → 401 by key-auth"),
    ]


def test_a_tighter_rate_limit(capsys, recording, tmp_path):
    flows, config = recording
    candidate = edited(config, tmp_path, *[("{action: {max: 3,", "{action: {max: 1,")])
    found = dict(transitions(changed_entries(capsys, flows, candidate, tmp_path)))
    refused = {path: text for path, text in found.items() if not text.endswith("(response changed)")}
    assert refused == {
        "/c/1": "customers: 401 by jwt → 429 by rate-limit",
        "/c/2": "customers: 401 by jwt → 429 by rate-limit",
        "/o/1": "orders: proxied 200 → 429 by rate-limit",
        "/o/2": "orders: proxied 200 → 429 by rate-limit",
    }, "the first request of each client (/c/0, /o/0) still passes the limit"
    # The others get the same answer, which tells the client of the new limit.
    assert sorted(found.keys() - refused.keys()) == ["/c/0", "/c/3", "/c/ok", "/o/0", "/o/anonymous"]
    _, out = whatif_run(capsys, flows, "-c", candidate)
    assert "response headers ~ratelimit-policy ~x-ratelimit-limit" in out


def test_a_removed_endpoint(capsys, recording, tmp_path):
    found = dict(
        found_after(
            capsys,
            recording,
            tmp_path,
            ("  customers:\n    host: customers.local\n", ""),
            ("    apiEndpoints: [customers]\n", "    apiEndpoints: []\n"),
        )
    )
    assert set(found) == {"/c/0", "/c/1", "/c/2", "/c/3", "/c/ok"}
    assert found["/c/ok"] == "customers: 429 by rate-limit → 404 by no apiEndpoint"
    assert found["/c/0"] == "customers: 401 by jwt → 404 by no apiEndpoint"


def test_a_response_transformer(capsys, recording, tmp_path):
    flows, config = recording
    candidate = edited(
        config,
        tmp_path,
        ("policies: [jwt, proxy, rate-limit]", "policies: [jwt, proxy, rate-limit, response-transformer]"),
        (
            "      - proxy: [{action: {serviceEndpoint: orders, changeOrigin: true}}]\n",
            "      - response-transformer: [{action: {headers: {add: {X-Served-By: \"'gateway'\"}}}}]\n"
            "      - proxy: [{action: {serviceEndpoint: orders, changeOrigin: true}}]\n",
        ),
    )
    report = tmp_path / "report.json"
    status, out = whatif_run(capsys, flows, "-c", candidate, "--json", report)
    entries = json.loads(report.read_text())
    assert status == 1
    assert transitions(entries) == [
        (f"/o/{i}", "orders: proxied 200 → proxied 200 (response changed)") for i in range(3)
    ]
    assert "response headers +x-served-by" in out, "an example says what changed"
    assert entries[0]["changes"] == ["response"]


def test_expected_changes_pass_and_the_changed_flows_open_in_mitmweb(capsys, recording, tmp_path):
    flows, config = recording
    candidate = edited(config, tmp_path, ("serviceEndpoint: orders,", "serviceEndpoint: customers,"))
    changed = tmp_path / "changed.mitm"
    status, out = whatif_run(
        capsys,
        flows,
        "-c",
        candidate,
        "--changed",
        changed,
        "--expect",
        "orders: proxied 200 -> proxied 200 (*)",
    )
    assert status == 0, out
    assert "(expected)" in out
    assert stat.S_IMODE(changed.stat().st_mode) == 0o600, "changed flows hold credentials"
    with open(changed, "rb") as f:
        read = [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]
    assert [f.comment for f in read] == [
        "whatif: orders: proxied 200 → proxied 200 (serviceEndpoint orders → customers)"
    ] * 3
    assert all(f.marked for f in read)
    status, _ = whatif_run(capsys, flows, "-c", candidate, "--expect", "customers: *")
    assert status == 1, "an --expect rule that does not match lets nothing pass"


def test_the_command_is_quiet_when_piped_and_says_what_is_wrong(recording, tmp_path):
    flows, config = recording
    run = subprocess.run(
        [MITMGATEWAY, "whatif", flows, "-c", config], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", "no progress lines when piped"
    assert "10 unchanged" in run.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text(config.read_text().replace("serviceEndpoint: orders,", "serviceEndpoint: nowhere,"))
    run = subprocess.run(
        [MITMGATEWAY, "whatif", flows, "-c", broken], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 2
    assert f"{broken}:" in run.stderr and "nowhere" in run.stderr


def test_a_jwks_uri_is_indeterminate_unless_its_keys_are_given(capsys, recording, tmp_path, rsa_keys):
    flows, config = recording
    uri = "http://127.0.0.1:9/jwks.json"
    candidate = edited(config, tmp_path, *[(f"secretOrPublicKeyFile: {rsa_keys[1]}", f"jwksUri: '{uri}'")])
    report = tmp_path / "report.json"
    status, out = whatif_run(capsys, flows, "-c", candidate, "--json", report)
    assert status == 1
    entries = json.loads(report.read_text())
    # Every request a jwt step judged (the rate limit answers three others first).
    assert [e["path"] for e in entries] == ["/o/0", "/o/1", "/o/2"]
    assert all(e["indeterminate"] for e in entries)
    assert f"jwt's keys at {uri} are not fetched offline" in entries[0]["reason"]
    public = serialization.load_pem_public_key(rsa_keys[1].read_bytes())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(public))]}))
    status, out = whatif_run(capsys, flows, "-c", candidate, "--jwks", f"{uri}={jwks}")
    assert status == 0, out


def test_a_recording_without_credentials_replays_with_the_identity_it_kept(
    capsys, tmp_path, config_text, token
):
    flows = _record(tmp_path, config_text, token, "mitmdump", "gateway_record_credentials=false")
    config = tmp_path / "gateway.config.yml"
    status, out = whatif_run(capsys, flows, "-c", config)
    assert status == 0, out
    # /c/ok was refused by the rate limit before jwt saw its token: nothing was recorded as its
    # identity, and the three proxied orders requests are assumed to be who they were.
    assert "assumed for 3 requests: identity from the recording (its authorization left out)" in out
    candidate = edited(config, tmp_path, *[("{action: {max: 3,", "{action: {max: 1,")])
    entries = changed_entries(capsys, flows, candidate, tmp_path)
    assumed = {e["path"]: e["after"].get("assumed") for e in entries}
    assert assumed["/o/1"] is None, "refused by the rate limit before any identity was needed"
    assert entries[0]["before"].get("assumed") is None
    # Let through the limit, /c/ok reaches jwt, which never judged its (removed) token.
    candidate = edited(config, tmp_path, *[("{action: {max: 3,", "{action: {max: 30,")])
    entries = changed_entries(capsys, flows, candidate, tmp_path)
    unknown = [e for e in entries if e.get("indeterminate")]
    assert [e["path"] for e in unknown] == ["/c/ok"]
    assert "does not say what jwt would make of them" in unknown[0]["reason"]
    # The anonymous ones (their cookie removed) are decided again: jwt found no token then.
    assert {e["path"]: e["after"]["policy"] for e in entries}["/c/3"] == "jwt"


def test_a_plain_mitmdump_recording_is_a_migration_check(capsys, tmp_path, upstreams, config_text, token):
    """Flows recorded by plain mitmdump in front of a service (as in front of another gateway):
    their status is the baseline."""
    recording, port = tmp_path / "plain.mitm", free_port()
    confdir = tmp_path / "confdir"
    command = [
        str(Path(sys.executable).with_name("mitmdump")),
        "--mode",
        f"reverse:{upstreams['orders'].url}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--set",
        "keep_host_header=true",
        "-w",
        str(recording),
        "-q",
    ]
    from processes import stop, wait_for_port

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        from harness import send

        assert send(port, "/o/1", host="orders.local", headers=bearer(token)).status == 200
        assert send(port, "/o/2", host="orders.local").status == 200
    finally:
        stop(process)
    candidate = tmp_path / "gateway.config.yml"
    candidate.write_text(config_text(free_port()))
    found = transitions(changed_entries(capsys, recording, candidate, tmp_path))
    assert found == [("/o/2", "orders: 200 → 401 by jwt")]


def test_a_baseline_config_decides_before_as_the_candidate_decides_after(capsys, recording, tmp_path):
    flows, config = recording
    baseline = edited(config, tmp_path, ("{action: {max: 3,", "{action: {max: 30,"))
    candidate = tmp_path / "candidate-2.yml"
    candidate.write_text(
        baseline.read_text().replace("serviceEndpoint: orders,", "serviceEndpoint: customers,")
    )
    report = tmp_path / "baseline-report.json"
    status, out = whatif_run(capsys, flows, "-c", candidate, "--baseline", baseline, "--json", report)
    assert status == 1
    assert f"(before: {baseline})" in out
    # Both sides decided now: the requests the live limit refused are decided under the raised one
    # (and answered the same by both configs), so only the moved ones differ.
    assert transitions(json.loads(report.read_text())) == [
        (f"/o/{i}", "orders: proxied 200 → proxied 200 (serviceEndpoint orders → customers)")
        for i in range(3)
    ]


def test_progress_shows_on_a_terminal(recording):
    flows, config = recording
    primary, secondary = pty.openpty()
    try:
        run = subprocess.run(
            [MITMGATEWAY, "whatif", flows, "-c", config],
            stdout=subprocess.PIPE,
            stderr=secondary,
            cwd=ROOT,
            timeout=120,
        )
        os.close(secondary)
        secondary = -1
        shown = b""
        with contextlib.suppress(OSError):  # the terminal's other end is closed: all is read
            while chunk := os.read(primary, 4096):
                shown += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert run.returncode == 0
    assert b"10/10 flows" in shown and b"flows/s" in shown and b"s left" in shown


def test_rate_limits_shared_in_redis_are_counted_from_the_recording_and_said_so(capsys, recording, tmp_path):
    flows, config = recording
    # Nothing listens on port 1: a replay that tried to reach Redis would fail, not decide.
    candidate = edited(
        config,
        tmp_path,
        ("policies: [", "rateLimitStore: {type: redis, url: 'redis://127.0.0.1:1/0'}\npolicies: ["),
    )
    status, out = whatif_run(capsys, flows, "-c", candidate)
    assert status == 0, out
    assert "10 unchanged" in out
    # Every request a rate-limit step counted (all but the one no apiEndpoint served).
    assert "assumed for 9 requests: rate limits counted from this recording alone" in out


def test_a_large_recording_is_read_by_two_processes_as_by_one(recording, monkeypatch):
    from mitmgateway.whatif import recorded

    flows, _ = recording
    alone = [r.state for r in recorded.read_flows([flows])]
    monkeypatch.setattr(recorded, "PARALLEL_BYTES", 0)  # any file is large
    assert [r.state for r in recorded.read_flows([flows])] == alone
    with open(flows, "rb") as f:
        assert sorted(state["id"] for state in alone) == sorted(flow.id for flow in io.FlowReader(f).stream())
    truncated = flows.with_name("truncated.mitm")
    truncated.write_bytes(flows.read_bytes()[:-10])
    with pytest.raises(recorded.UnreadableFlows, match=r"truncated\.mitm"):
        recorded.read_flows([truncated])
