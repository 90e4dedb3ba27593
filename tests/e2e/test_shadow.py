"""A shadow config (gateway_shadow, mitmgateway run --shadow): every request decided again under a
candidate, and exactly the requests it decides otherwise reported, in the access log and /metrics;
the candidate reloaded, and a broken one never affecting serving."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from harness import admin_get, bearer, free_port, metric, send, wait_until
from processes import walkthrough_config

KEY_AUTH_ON_ORDERS = (
    "  orders:\n    apiEndpoints: [orders]\n    policies:\n",
    "  orders:\n    apiEndpoints: [orders]\n    policies:\n      - key-auth: [{action: {}}]\n",
)
CUSTOMERS_UNDER_V2 = ("    host: customers.local\n", "    host: customers.local\n    paths: '/v2/*'\n")
DIFFERENCES = "mitmgateway_shadow_differences_total"


def candidate_of(serving: str) -> str:
    """The serving config with a new auth step (key-auth on orders) and a moved route (customers
    only under /v2)."""
    text = serving.replace(
        "policies: [jwt, proxy, rate-limit]", "policies: [jwt, key-auth, proxy, rate-limit]"
    )
    for old, new in (KEY_AUTH_ON_ORDERS, CUSTOMERS_UNDER_V2):
        text = text.replace(old, new)
    return text


def differences(admin_port: int) -> dict[tuple[str, ...], float]:
    """Every series of the differences counter (summed over a pool's workers), by its labels:
    serving and candidate pipeline, serving and candidate status."""
    found = {}
    for line in admin_get(admin_port, "/metrics")[1].splitlines():
        if line.startswith(DIFFERENCES + "{"):
            labels = dict(re.findall(r'(\w+)="(.*?)"', line))
            names = ("serving_pipeline", "candidate_pipeline", "serving_status", "candidate_status")
            found[tuple(labels[name] for name in names)] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.parametrize("runner", ["mitmdump", "mitmgateway"])
def test_a_shadow_config_reports_exactly_the_requests_it_decides_otherwise(
    start_gateway, upstreams, rsa_keys, token, tmp_path, runner
):
    admin_port = free_port()
    urls = upstreams["customers"].url, upstreams["orders"].url
    extra = f"admin: {{port: {admin_port}}}\naccessLog: {{path: logs/access.log}}\n"
    serving = walkthrough_config(8080, *urls, rsa_keys[1], max_requests=100) + extra
    candidate = tmp_path / "candidate.yml"
    candidate.write_text(candidate_of(serving))
    gateway = start_gateway(
        lambda port: serving.replace("port: 8080", f"port: {port}"),
        runner=runner,
        options=(f"gateway_shadow={candidate}",),
    )
    sent = [
        ("/c/1", "customers.local", bearer(token), 200),
        ("/v2/c", "customers.local", bearer(token), 200),
        ("/o/1", "orders.local", bearer(token), 200),
        ("/o/2", "orders.local", {}, 401),
        ("/x", "unknown.local", {}, 404),
    ]
    for path, host, headers, status in sent:
        assert gateway.send(path, host=host, headers=headers).status == status, "serving is unchanged"
    log = tmp_path / "logs" / "access.log"
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == len(sent))
    shadow = {entry["path"]: entry["shadow"] for entry in map(json.loads, log.read_text().splitlines())}
    assert {path: (s["status"], s["policy"]) for path, s in shadow.items()} == {
        "/c/1": (404, "no apiEndpoint"),
        "/v2/c": (200, None),
        "/o/1": (401, "key-auth"),
        "/o/2": (401, "key-auth"),
        "/x": (404, "no apiEndpoint"),
    }
    assert differences(admin_port) == {
        ("customers", "", "200", "404"): 1.0,
        ("orders", "orders", "200", "401"): 1.0,
        ("orders", "orders", "401", "401"): 1.0,
    }, "those, and nothing else"

    # A broken candidate: refused, the last good one still decides, serving untouched.
    candidate.write_text("pipelines: [")
    assert wait_until(
        lambda: (
            "shadow config change refused, the last good one still decides" in gateway.log_path.read_text()
        )
    )
    assert gateway.send("/o/3", host="orders.local", headers=bearer(token)).status == 200
    # The candidate made the same as serving: no more differences.
    candidate.write_text(serving)
    assert wait_until(lambda: "shadow config reloaded" in gateway.log_path.read_text())
    assert gateway.send("/c/2", host="customers.local", headers=bearer(token)).status == 200
    assert wait_until(lambda: len(log.read_text().splitlines()) == len(sent) + 2)
    last = [json.loads(line) for line in log.read_text().splitlines()][-2:]
    assert [(e["path"], e["shadow"]["policy"], e["shadow"]["status"]) for e in last] == [
        ("/o/3", "key-auth", 401),
        ("/c/2", None, 200),
    ]


def test_a_broken_shadow_config_at_startup_never_stops_serving(
    start_gateway, upstreams, tmp_path, rsa_keys, token
):
    candidate = tmp_path / "candidate.yml"
    candidate.write_text("pipelines: [")
    urls = upstreams["customers"].url, upstreams["orders"].url
    gateway = start_gateway(
        lambda port: walkthrough_config(port, *urls, rsa_keys[1], max_requests=100),
        options=(f"gateway_shadow={candidate}",),
    )
    assert gateway.send("/o", host="orders.local", headers=bearer(token)).status == 200
    assert "invalid shadow config, no shadow decides until it is fixed" in gateway.log_path.read_text()


@pytest.mark.parametrize(("runner", "workers"), [("mitmdump", 1), ("mitmgateway", 2)])
def test_under_load_while_both_configs_reload_exactly_the_differing_requests_are_counted(
    start_gateway, upstreams, rsa_keys, token, tmp_path, runner, workers
):
    admin_port = free_port()
    urls = upstreams["customers"].url, upstreams["orders"].url
    serving = walkthrough_config(8080, *urls, rsa_keys[1], max_requests=10**6)
    serving += f"admin: {{port: {admin_port}}}\n"
    candidate = tmp_path / "candidate.yml"
    candidate.write_text(candidate_of(serving))
    gateway = start_gateway(
        lambda port: serving.replace("port: 8080", f"port: {port}"),
        runner=runner,
        workers=workers,
        options=(f"gateway_shadow={candidate}",),
    )
    assert wait_until(lambda: admin_get(admin_port, "/ready")[0] == 200, timeout=20)
    # Each client sends each of these, in turn, many times: (path, host, headers, serving's status).
    mix = [
        ("/c/{n}", "customers.local", bearer(token), 200),  # moved: 404 under the candidate
        ("/v2/c/{n}", "customers.local", bearer(token), 200),  # the same under both
        ("/o/{n}", "orders.local", bearer(token), 200),  # key-auth: 401
        ("/o/{n}", "orders.local", {}, 401),  # 401 by jwt, by key-auth under the candidate
    ]
    clients, rounds = 4, 25
    wrong: list[tuple[str, int]] = []
    turns = [0] * clients
    edited_enough = threading.Event()

    def client(number: int) -> None:
        # At least `rounds` turns, and on until both files have been edited a few times.
        while turns[number] < rounds or not edited_enough.is_set():
            turn = turns[number]
            turns[number] += 1
            for path, host, headers, status in mix:
                target = path.format(n=f"{number}-{turn}")
                got = send(gateway.port, target, host=host, headers=headers).status
                if got != status:
                    wrong.append((target, got))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    # Both files change while the load runs, each time in a way that decides nothing otherwise.
    edits = 0
    while any(thread.is_alive() for thread in threads):
        edits += 1
        for path in (gateway.config, candidate):
            path.write_text(path.read_text() + f"# edit {edits}\n")
        if edits >= 3:
            edited_enough.set()
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    assert edits >= 3, "the load outlasted a few edits of each file"
    assert not wrong, f"serving is unchanged by the shadow and the reloads: {wrong[:5]}"
    log = gateway.log()
    assert log.count("shadow config reloaded") >= workers * 2
    reloads = metric(admin_get(admin_port, "/metrics")[1], "mitmgateway_config_reloads_total", result="ok")
    assert reloads >= workers * 2
    each = sum(turns)
    expected = {
        ("customers", "", "200", "404"): each,
        ("orders", "orders", "200", "401"): each,
        ("orders", "orders", "401", "401"): each,
    }
    assert wait_until(lambda: differences(admin_port) == expected, timeout=10), differences(admin_port)
