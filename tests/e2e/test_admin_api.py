"""Express Gateway's admin REST API on a running gateway's admin port: its users' scripts run
unchanged, writes land in the files (comments kept, invalid ones refused) and are served before
the answer, under mitmdump and under --workers 2."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import one_pipeline
from harness import ROOT, free_port, gateway_command, wait_until
from mitmgateway.policies.key_auth import hash_api_key_secret

KEY_AUTH = "- key-auth: [{action: {}}]\n- proxy: [{action: {serviceEndpoint: backend}}]"
SCRIPT = ROOT / "examples" / "admin-api" / "eg-quickstart.sh"


def call(
    admin_port: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One admin API request: (status, the JSON answer, or its text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture
def admin_gateway(start_gateway, upstreams, tmp_path):
    """A gateway whose one pipeline asks for key-auth, with an admin port; (gateway, admin port)."""

    def start(**kwargs):  # type: ignore[no-untyped-def]
        admin_port = free_port()
        (tmp_path / "consumers.yml").write_text("# who may call\nconsumers: {}  # none yet\n")
        config = one_pipeline(upstreams["orders"].url, KEY_AUTH, extra=f"admin: {{port: {admin_port}}}\n")
        return start_gateway("# the gateway\n" + config, **kwargs), admin_port

    return start


@pytest.mark.parametrize("runner", ["mitmdump", "workers"])
def test_an_express_gateway_admin_script_runs_unchanged(admin_gateway, runner):
    options = {"runner": "mitmgateway", "workers": 2} if runner == "workers" else {}
    gateway, admin_port = admin_gateway(**options)
    env = {
        **os.environ,
        "ADMIN": f"http://127.0.0.1:{admin_port}",
        "GATEWAY": f"http://127.0.0.1:{gateway.port}",
        "API_PATH": "/orders",
    }
    # Under --workers 2 the kernel spreads the script's calls over both workers: each call passes
    # only if every worker served the write before the admin API answered it.
    for username in ("bob", "carol", "dave"):
        result = subprocess.run(
            ["bash", str(SCRIPT)],
            env={**env, "USERNAME": username},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "call with the key: 200" in result.stdout
        assert "Deactivated" in result.stdout
        assert "call with the deactivated key: 401" in result.stdout

    consumers_file = gateway.config.parent / "consumers.yml"
    text = consumers_file.read_text()
    assert text.startswith("# who may call\n")  # the file's comments are kept
    assert "keySecret:" not in text and "keySecretHash: sha256:" in text  # secrets only hashed
    status, users = call(admin_port, "GET", "/users")
    assert status == 200 and [u["username"] for u in users["users"]] == ["bob", "carol", "dave"]
    assert users["nextKey"] == 0
    status, apps = call(admin_port, "GET", "/apps")
    assert [a["userId"] for a in apps["apps"]] == [u["id"] for u in users["users"]]


def test_a_write_the_gateway_would_refuse_is_a_400_and_leaves_the_files(admin_gateway):
    gateway, admin_port = admin_gateway()
    config_before = gateway.config.read_text()
    status, text = call(
        admin_port,
        "PUT",
        "/pipelines/broken",
        {"apiEndpoints": ["api"], "policies": [{"jwt": [{"action": {}}]}]},
    )
    assert status == 400
    assert "gateway.config.yml" in text and "pipelines.broken" in text, text
    assert gateway.config.read_text() == config_before
    status, text = call(admin_port, "PUT", "/service-endpoints/backend", {"url": "not a url"})
    assert status == 400 and "serviceEndpoints.backend.url" in text, text
    assert gateway.config.read_text() == config_before
    assert call(admin_port, "GET", "/service-endpoints/nope")[0] == 404


def test_config_writes_keep_comments_and_are_served_before_the_answer(admin_gateway, upstreams):
    gateway, admin_port = admin_gateway()
    assert gateway.send("/customers/1", host="customers.example").status == 401  # key-auth on every path
    status, _ = call(admin_port, "PUT", "/service-endpoints/customers", {"url": upstreams["customers"].url})
    assert status == 201
    status, _ = call(admin_port, "PUT", "/api-endpoints/customers", {"host": "customers.example"})
    assert status == 201
    pipeline = {
        "apiEndpoints": ["customers"],
        "policies": [{"proxy": [{"action": {"serviceEndpoint": "customers"}}]}],
    }
    assert call(admin_port, "PUT", "/pipelines/customers", pipeline)[0] == 201
    # Served as soon as the answer came: no key needed on the new, open pipeline.
    reply = gateway.send("/customers/1", host="customers.example")
    assert reply.status == 200 and json.loads(reply.body)["service"] == "customers"
    text = gateway.config.read_text()
    assert text.startswith("# the gateway\n")
    assert call(admin_port, "GET", "/pipelines/customers") == (200, pipeline)
    assert call(admin_port, "PUT", "/pipelines/customers", pipeline)[0] == 204  # replaced
    assert call(admin_port, "PUT", "/policies/cors") == (200, {"status": "ok"})
    assert "cors" in call(admin_port, "GET", "/policies")[1]
    assert call(admin_port, "DELETE", "/pipelines/customers")[0] == 204
    assert gateway.send("/customers/1", host="customers.example").status == 401


def test_credentials_secrets_are_shown_once_and_new_files_are_owner_only(admin_gateway, tmp_path):
    _gateway, admin_port = admin_gateway()
    consumers_file = tmp_path / "consumers.yml"
    consumers_file.unlink()  # the admin API creates it
    assert (
        call(admin_port, "POST", "/users", {"username": "eve", "firstname": "Eve", "lastname": "E"})[0] == 200
    )
    assert stat.S_IMODE(consumers_file.stat().st_mode) == 0o600
    status, created = call(admin_port, "POST", "/credentials", {"consumerId": "eve", "type": "basic-auth"})
    assert status == 200 and len(created["password"]) >= 32
    status, shown = call(admin_port, "GET", "/credentials/basic-auth/eve")
    assert status == 200 and "password" not in shown and shown["isActive"] is True
    assert created["password"] not in consumers_file.read_text()


def test_the_admin_api_off_loopback_needs_a_credential(upstreams, tmp_path, confdir):
    config = tmp_path / "gateway.config.yml"
    extra = f"admin: {{port: {free_port()}, host: 0.0.0.0}}\n"
    config.write_text(
        one_pipeline(upstreams["orders"].url, KEY_AUTH, extra=extra).replace("{port}", str(free_port()))
    )
    result = subprocess.run(
        gateway_command("mitmdump", config, confdir, 1), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "admin.host: 0.0.0.0 is not loopback" in result.stdout + result.stderr


def test_with_a_token_the_admin_api_answers_only_to_it(start_gateway, upstreams):
    token = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mitmgateway"), "admin-token"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = token.split("token (shown once): ")[1].split()[0]
    token_hash = token.split("tokenHash: ")[1].split("}")[0]
    admin_port = free_port()
    extra = f"admin: {{port: {admin_port}, host: 0.0.0.0, tokenHash: '{token_hash}'}}\n"
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, KEY_AUTH, extra=extra))
    assert call(admin_port, "GET", "/users")[0] == 401
    assert call(admin_port, "GET", "/users", token="wrong")[0] == 401
    assert call(admin_port, "GET", "/users", token=secret) == (200, {"users": [], "nextKey": 0})
    assert call(admin_port, "GET", "/health")[0] == 200  # probes need none
    # A new token in the config: the old one stops working, without a restart.
    new_secret = "rotated-" + secret
    new_hash = hash_api_key_secret(new_secret)
    gateway.config.write_text(gateway.config.read_text().replace(token_hash, new_hash))
    assert wait_until(lambda: call(admin_port, "GET", "/users", token=secret)[0] == 401)
    assert call(admin_port, "GET", "/users", token=new_secret)[0] == 200


def test_consumers_cli_against_a_running_gateway(admin_gateway):
    gateway, admin_port = admin_gateway()
    cli = [
        str(ROOT / ".venv" / "bin" / "mitmgateway"),
        "consumers",
        "--admin",
        f"http://127.0.0.1:{admin_port}",
    ]

    def run(*args: str) -> str:
        result = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("users", "create", "-p", "username=frank", "-p", "firstname=Frank", "-p", "lastname=F")
    created = json.loads(run("credentials", "create", "-c", "frank", "-t", "key-auth"))
    key = f"{created['keyId']}:{created['keySecret']}"
    assert gateway.send("/orders", headers={"Authorization": f"apiKey {key}"}).status == 200
    run("users", "deactivate", "frank")
    assert gateway.send("/orders", headers={"Authorization": f"apiKey {key}"}).status == 401
    assert json.loads(run("users", "info", "frank"))["isActive"] is False


def test_consumers_in_redis_are_shared_by_every_instance_and_survive_an_outage(
    start_gateway, upstreams, tmp_path, redis_server
):
    (tmp_path / "system.config.yml").write_text(
        f"db:\n  redis:\n    host: 127.0.0.1\n    port: {redis_server.port}\n    namespace: EG\n"
    )
    started = []
    for name in ("a.yml", "b.yml"):
        admin_port = free_port()
        extra = f"admin: {{port: {admin_port}}}\nconsumers: {{store: redis}}\n"
        gateway = start_gateway(one_pipeline(upstreams["orders"].url, KEY_AUTH, extra=extra), name=name)
        started.append((gateway, admin_port))
    (a, a_admin), (b, _b_admin) = started
    assert call(a_admin, "POST", "/users", {"username": "gina", "firstname": "G", "lastname": "H"})[0] == 200
    status, created = call(a_admin, "POST", "/credentials", {"consumerId": "gina", "type": "key-auth"})
    assert status == 200
    key = {"Authorization": f"apiKey {created['keyId']}:{created['keySecret']}"}
    assert a.send("/orders", headers=key).status == 200  # served by the instance written to at once
    # ...and by the other within a second, without a restart or a file.
    assert wait_until(lambda: b.send("/orders", headers=key).status == 200, timeout=1.0)
    assert not (tmp_path / "consumers.yml").exists()

    redis_server.stop()
    for gateway in (a, b):
        assert gateway.send("/orders", headers=key).status == 200  # the consumers last seen
    assert call(a_admin, "GET", "/users")[0] == 503
    assert wait_until(lambda: "unavailable" in a.log() and "unavailable" in b.log())
    redis_server.start()  # empty again (no persistence): a new version is seen by both
    assert call(a_admin, "POST", "/users", {"username": "hal", "firstname": "H", "lastname": "I"})[0] == 200
    assert wait_until(lambda: b.send("/orders", headers=key).status == 401, timeout=2.0)
    for gateway in (a, b):
        assert wait_until(lambda gateway=gateway: "is back" in gateway.log())
        assert gateway.log().count("unavailable") == 1, gateway.log()  # the outage said once


def test_a_web_page_cannot_write_through_the_tokenless_admin_api(admin_gateway):
    """A page the operator opens may POST text/plain to 127.0.0.1 unasked, or reach it under a
    name of its own (DNS rebinding): neither writes."""
    _gateway, admin_port = admin_gateway()
    for username, headers, expected in [
        ("mallory", {"Content-Type": "text/plain", "Host": f"127.0.0.1:{admin_port}"}, 415),
        ("rebound", {"Content-Type": "application/json", "Host": "attacker.example"}, 403),
        ("operator", {"Content-Type": "application/json", "Host": f"localhost:{admin_port}"}, 200),
    ]:
        body = json.dumps({"username": username, "firstname": "M", "lastname": "X"})
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        conn.putrequest("POST", "/users", skip_host=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode())
        assert conn.getresponse().status == expected, headers
        conn.close()
    assert [u["username"] for u in call(admin_port, "GET", "/users")[1]["users"]] == ["operator"]
