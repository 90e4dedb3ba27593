"""Consumers and credentials: checkCredentialExistence, key-auth, basic-auth, scopes, the script."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow, request_status, status_of
from harness import ROOT, bearer, wait_until
from mint_token import mint
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import StepState
from mitmgateway.policies.key_auth import hash_api_key_secret

PROXY = "- proxy: [{action: {serviceEndpoint: backend}}]"
PASSWORD_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
ARGON2_HASH = PasswordHasher().hash("hunter2")

CONSUMERS = f"""\
consumers:
  alice:
    scopes: [orders:read]
    credentials:
      - {{type: jwt, sub: alice@example.com}}
      - {{type: key-auth, keyId: k1, keySecretHash: '{hash_api_key_secret("topsecret")}'}}
      - {{type: basic-auth, username: alice, passwordHash: '{PASSWORD_HASH}'}}
      - {{type: jwt, sub: old-alice, active: false}}
  bob:
    active: false
    credentials:
      - {{type: jwt, sub: bob@example.com}}
      - {{type: key-auth, keyId: k2, keySecretHash: '{hash_api_key_secret("bobsecret")}'}}
  carol:
    credentials:
      - {{type: basic-auth, username: carol, passwordHash: '{ARGON2_HASH}'}}
      - {{type: key-auth, keyId: k3, scopes: [orders:write],
         keySecretHash: '{hash_api_key_secret("carolsecret")}'}}
"""


def gateway(tmp_path: Path, steps: str, endpoint: str = "host: '*'"):  # type: ignore[no-untyped-def]
    (tmp_path / "consumers.yml").write_text(CONSUMERS)
    config = one_pipeline("http://127.0.0.1:9", f"{steps}\n{PROXY}", endpoint=endpoint)
    return gateway_for(tmp_path, config.replace("{port}", "8080"))


def outcome(gw, **kwargs) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """Run a request through policies that answer at once (jwt, key-auth)."""
    flow = make_flow(**kwargs)
    return request_status(gw, flow), flow


def test_check_credential_existence(tmp_path, rsa_keys):
    steps = f"- jwt: [{{action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: true}}}}]"
    with gateway(tmp_path, steps) as gw:

        def status(sub: str) -> int:
            return outcome(gw, headers=bearer(mint(rsa_keys[0], sub)))[0]

        code, flow = outcome(
            gw, headers={"Authorization": f"Bearer {mint(rsa_keys[0], 'alice@example.com')}"}
        )
        assert code == 200
        assert flow.metadata["gateway"]["consumer"] == "alice"
        assert flow.metadata["gateway"]["user"]["id"] == "alice"
        assert status("bob@example.com") == 401  # inactive consumer
        assert status("old-alice") == 401  # inactive credential
        assert status("mallory@example.com") == 401  # unknown


def test_key_auth_through_header_and_query(tmp_path):
    with gateway(tmp_path, "- key-auth: [{action: {}}]") as gw:
        assert outcome(gw, headers={"Authorization": "apiKey k1:topsecret"})[0] == 200
        assert outcome(gw, headers={"Authorization": "APIKEY k1:topsecret"})[0] == 200
        assert outcome(gw, path="/x?apiKey=k1:topsecret")[0] == 200
        assert outcome(gw, headers={"Authorization": "apiKey k1:wrong"})[0] == 401
        assert outcome(gw, headers={"Authorization": "apiKey k2:bobsecret"})[0] == 401  # inactive
        assert outcome(gw, headers={"Authorization": "Bearer k1:topsecret"})[0] == 401
        assert outcome(gw)[0] == 401
    action = "disableQueryParam: true, apiKeyHeader: X-Api-Key, disableHeadersScheme: true"
    with gateway(tmp_path, f"- key-auth: [{{action: {{{action}}}}}]") as gw:
        assert outcome(gw, headers={"X-Api-Key": "k1:topsecret"})[0] == 200
        assert outcome(gw, path="/x?apiKey=k1:topsecret")[0] == 401


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_with_bcrypt_and_argon2(tmp_path):
    async def main() -> None:
        with gateway(tmp_path, "- basic-auth: [{action: {}}]") as gw:

            async def status(headers: dict[str, str]) -> tuple[int, object]:
                flow = make_flow(headers=headers)
                pending = gw.requestheaders(flow)
                if pending is not None:
                    await pending
                return status_of(flow), flow

            assert (await status(basic("alice", "s3cret")))[0] == 200
            assert gw.requestheaders(make_flow(headers=basic("alice", "s3cret"))) is None, "remembered"
            assert (await status(basic("carol", "hunter2")))[0] == 200
            code, flow = await status(basic("alice", "wrong"))
            assert code == 401
            assert flow.response.headers["WWW-Authenticate"] == 'Basic realm="api", charset="UTF-8"'
            assert (await status(basic("nobody", "s3cret")))[0] == 401
            assert (await status({"Authorization": "Basic !!!"}))[0] == 401

    asyncio.run(main())


def test_scopes_are_checked_once_authenticated(tmp_path):
    steps = "- key-auth: [{action: {}}]"
    with gateway(tmp_path, steps, endpoint="host: '*', scopes: [orders:read]") as gw:
        assert outcome(gw, headers={"Authorization": "apiKey k1:topsecret"})[0] == 200
        code, flow = outcome(gw, headers={"Authorization": "apiKey k3:carolsecret"})
        assert (code, flow.response.text) == (403, "Forbidden")
        assert flow.metadata["gateway"]["missingScopes"] == ["orders:read"]


def test_a_consumers_file_error_names_that_file(tmp_path):
    (tmp_path / "consumers.yml").write_text(
        "consumers:\n  alice:\n    credentials:\n"
        "      - {type: key-auth, keyId: k, keySecretHash: topsecret}\n"
    )
    config = tmp_path / "gateway.config.yml"
    config.write_text(one_pipeline("http://127.0.0.1:9", PROXY).replace("{port}", "8080"))
    with pytest.raises(ConfigError) as info:
        load_config(config, StepState(), {})
    assert str(info.value) == (
        f"{tmp_path / 'consumers.yml'}:4:36: consumers.alice.credentials[0].keySecretHash: "
        "must be sha256:HEX, never the secret itself"
    )


def script(directory: Path, *args: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "consumers.py"),
            "--file",
            str(directory / "consumers.yml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_consumers_script_round_trip_on_a_running_gateway(start_gateway, upstreams, tmp_path):
    (tmp_path / "consumers.yml").write_text("# our partners\nconsumers: {}  # none yet\n")
    script(tmp_path, "users", "create", "-p", "username=partner", "-p", "firstname=P", "-p", "lastname=Q")
    created = json.loads(script(tmp_path, "credentials", "create", "-c", "partner", "-t", "key-auth"))
    api_key = f"{created['keyId']}:{created['keySecret']}"
    assert created["keySecret"] not in (tmp_path / "consumers.yml").read_text(), "only the hash is stored"
    assert (tmp_path / "consumers.yml").read_text().startswith("# our partners\n")
    listed = json.loads(script(tmp_path, "credentials", "list", "-c", "partner"))["credentials"]
    assert [(c["type"], c["keyId"], c["isActive"]) for c in listed] == [("key-auth", created["keyId"], True)]

    config = one_pipeline(upstreams["orders"].url, f"- key-auth: [{{action: {{}}}}]\n{PROXY}")
    gw = start_gateway(config)
    assert gw.send(headers={"Authorization": f"apiKey {api_key}"}).status == 200
    assert script(tmp_path, "users", "deactivate", "partner").strip() == "Deactivated"
    assert wait_until(
        lambda: gw.send(headers={"Authorization": f"apiKey {api_key}"}).status == 401, timeout=5
    )
    script(tmp_path, "users", "activate", "partner")
    assert wait_until(
        lambda: gw.send(headers={"Authorization": f"apiKey {api_key}"}).status == 200, timeout=5
    )
    # The reload names the file that changed: consumers.yml, not gateway.config.yml.
    assert f"config reloaded: {tmp_path / 'consumers.yml'} changed" in gw.log()
    assert "gateway.config.yml changed" not in gw.log()


def test_malformed_credentials_are_401_not_errors(tmp_path, rsa_keys):
    with gateway(tmp_path, "- key-auth: [{action: {}}]") as gw:
        assert outcome(gw, path="/x?apiKey=k1:%FF%FE")[0] == 401
        assert outcome(gw, headers={"Authorization": "apiKey k1:t\udcffx"})[0] == 401
    steps = f"- jwt: [{{action: {{secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false}}}}]"
    with gateway(tmp_path, steps) as gw:
        assert outcome(gw, headers={"Authorization": "Bearer ey\udcff.x.y"})[0] == 401

    async def basic_status() -> int:
        with gateway(tmp_path, "- basic-auth: [{action: {}}]") as gw:
            flow = make_flow(headers={"Authorization": "Basic \udce9t\u00e9"})
            pending = gw.requestheaders(flow)
            if pending is not None:
                await pending
            return flow.response.status_code

    assert asyncio.run(basic_status()) == 401


def test_scoped_endpoints_need_a_consumer_and_claim_headers_never_come_from_clients(tmp_path, rsa_keys):
    action = (
        f"secretOrPublicKeyFile: {rsa_keys[1]}, checkCredentialExistence: false, "
        "forwardClaims: {sub: X-User}"
    )
    skipped_jwt = f"- jwt: [{{condition: {{name: method, methods: POST}}, action: {{{action}}}}}]"
    with gateway(tmp_path, skipped_jwt) as gw:
        code, flow = outcome(gw, headers={"X-User": "admin"})
        assert code == 200 and "X-User" not in flow.request.headers
    with gateway(
        tmp_path, f"- jwt: [{{action: {{{action}}}}}]", endpoint="host: '*', scopes: [orders:read]"
    ) as gw:
        code, flow = outcome(gw, headers=bearer(mint(rsa_keys[0], "alice@example.com")))
        assert code == 403
        assert flow.metadata["gateway"]["answeredBy"] == "scopes without a consumer"


def test_a_consumers_file_created_after_start_takes_effect(start_gateway, upstreams, tmp_path):
    config = one_pipeline(upstreams["orders"].url, f"- key-auth: [{{action: {{}}}}]\n{PROXY}")
    gw = start_gateway(config)
    assert gw.send(headers={"Authorization": "apiKey nobody:x"}).status == 401
    script(tmp_path, "users", "create", "-p", "username=late", "-p", "firstname=L", "-p", "lastname=T")
    created = json.loads(script(tmp_path, "credentials", "create", "-c", "late", "-t", "key-auth"))
    api_key = f"{created['keyId']}:{created['keySecret']}"
    assert wait_until(
        lambda: gw.send(headers={"Authorization": f"apiKey {api_key}"}).status == 200, timeout=5
    )
