"""The admin API's handlers on real files (no server): Express Gateway's shapes and statuses,
what they write, and what they refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import one_pipeline
from mitmgateway.admin_api import AdminApi, AdminRequest
from mitmgateway.config.assemble import load_config
from mitmgateway.consumers import parse_consumers
from mitmgateway.policies import StepState
from mitmgateway.policies.basic_auth import password_matches
from mitmgateway.policies.key_auth import hash_api_key_secret

CONSUMERS = """\
# partners
consumers:
  alice:   # by hand
    credentials:
      - {type: jwt, sub: alice@example.com}
"""


@pytest.fixture
def api(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "consumers.yml").write_text(CONSUMERS)
    config = tmp_path / "gateway.config.yml"
    config.write_text(
        "# the gateway\n"
        + one_pipeline("http://127.0.0.1:9", "- proxy: [{action: {serviceEndpoint: backend}}]").replace(
            "{port}", "8080"
        )
    )
    handlers = AdminApi(config, tmp_path / "consumers.yml")

    def call(method: str, path: str, body: Any = None, **query: str) -> tuple[int, Any]:
        reply = handlers.handle(AdminRequest(method, path, query, body))
        return reply.status, reply.body

    return call


def consumers_of(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_consumers(
        yaml.safe_load((tmp_path / "consumers.yml").read_text()), tmp_path / "consumers.yml"
    )


def bob(api) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    status, user = api(
        "POST", "/users", {"username": "bob", "firstname": "Bob", "lastname": "Smith", "email": "b@x.io"}
    )
    assert status == 200
    return user


def test_users_have_express_gateways_shape_and_statuses(api, tmp_path):
    user = bob(api)
    assert user["username"] == "bob" and user["isActive"] is True and len(user["id"]) == 36
    assert {"firstname", "lastname", "email", "createdAt", "updatedAt"} <= user.keys()
    assert api("POST", "/users", {"username": "bob", "firstname": "B", "lastname": "S"}) == (
        409,
        "username already exists",
    )
    status, text = api("POST", "/users", {"username": "x", "firstname": "X"})
    assert (status, text) == (400, "data must have required property 'lastname'")
    assert (
        api("POST", "/users", {"username": "x", "firstname": "X", "lastname": "Y", "role": "admin"})[0] == 400
    )
    assert (
        api("POST", "/users", {"username": "x", "firstname": "X", "lastname": "Y", "email": "nope"})[0] == 400
    )
    assert api("GET", f"/users/{user['id']}") == api("GET", "/users/bob")
    assert api("GET", "/users/nobody") == (404, "User not found: nobody")
    status, updated = api("PUT", "/users/bob", {"username": "robert", "lastname": "Jones"})
    assert status == 200 and updated["username"] == "bob" and updated["lastname"] == "Jones"
    status, listed = api("GET", "/users", count="1")
    assert [u["username"] for u in listed["users"]] == ["alice"] and listed["nextKey"] == 1
    status, listed = api("GET", "/users", start="1", count="1")
    assert [u["username"] for u in listed["users"]] == ["bob"] and listed["nextKey"] == 0
    text = (tmp_path / "consumers.yml").read_text()
    assert text.startswith("# partners\nconsumers:\n  alice:   # by hand\n")


def test_deactivating_or_removing_a_user_takes_its_apps_along(api, tmp_path):
    user = bob(api)
    status, app = api(
        "POST", "/apps", {"name": "bobs-app", "userId": user["id"], "redirectUri": "https://x.io/cb"}
    )
    assert status == 200 and app["userId"] == user["id"] and app["isActive"] is True
    assert api("POST", "/apps", {"name": "x", "userId": "nobody"}) == (
        422,
        "The specified user does not exist",
    )
    assert api("POST", "/apps", {"name": "alice", "userId": "bob"})[0] == 409
    assert api("PUT", "/users/bob/status", {"status": False}) == (200, {"status": "Deactivated"})
    assert api("PUT", "/users/bob/status", {"status": False}) == (200, {"status": "Inactive"})
    assert api("GET", "/apps/bobs-app")[1]["isActive"] is False
    assert api("PUT", "/users/bob/status", {"status": True}) == (200, {"status": "Activated"})
    assert api("GET", "/apps/bobs-app")[1]["isActive"] is False  # as in Express Gateway
    status, renamed = api("PUT", f"/apps/{app['id']}", {"name": "bobs-tool"})
    assert status == 200 and renamed["name"] == "bobs-tool" and renamed["id"] == app["id"]
    assert api("DELETE", "/users/bob") == (204, None)
    assert api("GET", "/apps") == (200, {"apps": [], "nextKey": 0})
    assert set(yaml.safe_load((tmp_path / "consumers.yml").read_text())["consumers"]) == {"alice"}


def test_credentials_secrets_are_answered_once_and_stored_hashed(api, tmp_path):
    bob(api)
    status, key = api("POST", "/credentials", {"consumerId": "bob", "type": "key-auth"})
    assert status == 200 and key["isActive"] is True and key["keyId"] and key["keySecret"]
    assert "keySecret" not in api("GET", f"/credentials/key-auth/{key['keyId']}")[1]
    status, basic = api(
        "POST", "/credentials", {"consumerId": "bob", "type": "basic-auth", "credential": {"password": "pw"}}
    )
    assert status == 200 and "password" not in basic and basic["id"] == basic["consumerId"]
    again = api("POST", "/credentials", {"consumerId": "bob", "type": "basic-auth"})
    assert again == (409, "Credential already exists and is active")
    status, jwt = api(
        "POST", "/credentials", {"consumerId": "bob", "type": "jwt", "credential": {"keyId": "bob@idp"}}
    )
    assert status == 200 and jwt["keyId"] == jwt["id"] == "bob@idp"
    consumers = consumers_of(tmp_path)
    found = consumers.find("key-auth", key["keyId"])
    assert found is not None and found.credential.secret_hash == hash_api_key_secret(key["keySecret"])
    assert password_matches("pw", consumers.find("basic-auth", "bob").credential.secret_hash)
    assert consumers.find("jwt", "bob@idp").consumer.name == "bob"
    text = (tmp_path / "consumers.yml").read_text()
    assert key["keySecret"] not in text and "pw\n" not in text
    assert len(api("GET", "/credentials/bob")[1]["credentials"]) == 3
    assert len(api("GET", "/credentials")[1]["credentials"]) == 4  # and alice's
    assert api("PUT", f"/credentials/key-auth/{key['keyId']}/status", {"status": False}) == (
        200,
        {"status": "Deactivated"},
    )
    assert consumers_of(tmp_path).find("key-auth", key["keyId"]) is None


def test_credential_scopes_must_be_registered(api):
    bob(api)
    assert (
        api(
            "POST",
            "/credentials",
            {"consumerId": "bob", "type": "key-auth", "credential": {"scopes": ["read"]}},
        )[0]
        == 400
    )
    assert api("POST", "/scopes", {"scopes": ["read", "write"]}) == (201, None)
    assert api("POST", "/scopes", {"scopes": ["read"]}) == (409, "One or more scopes already exist.")
    status, key = api(
        "POST", "/credentials", {"consumerId": "bob", "type": "key-auth", "credential": {"scopes": "read"}}
    )
    assert status == 200 and key["scopes"] == ["read"]
    path = f"/credentials/key-auth/{key['keyId']}/scopes"
    assert api("PUT", f"{path}/write") == (204, None)
    assert api("PUT", f"{path}/admin")[0] == 400
    assert api("DELETE", f"{path}/read") == (204, None)
    assert api("GET", f"/credentials/key-auth/{key['keyId']}")[1]["scopes"] == ["write"]
    assert api("GET", "/scopes") == (200, {"scopes": ["read", "write"]})
    assert api("GET", "/scopes/read") == (200, {"scope": "read"})
    assert api("DELETE", "/scopes/read") == (204, None)
    assert api("GET", "/scopes/read")[0] == 404


def test_what_is_not_here_is_said_plainly(api):
    bob(api)
    status, text = api("POST", "/credentials", {"consumerId": "bob", "type": "oauth2"})
    assert status == 400 and "identity provider" in text
    assert api("POST", "/credentials", {"consumerId": "nobody", "type": "key-auth"}) == (
        422,
        "No consumer found with id: nobody",
    )
    assert api("GET", "/credentials/key-auth/nope") == (404, "No credential found with id: nope")
    assert api("PATCH", "/users") == (405, "Method Not Allowed")
    assert api("GET", "/tokens") == (404, "Not Found")


def test_a_consumers_file_the_gateway_would_refuse_is_not_written(api, tmp_path):
    broken = CONSUMERS + "      - {type: key-auth, keyId: k, keySecretHash: plaintext}\n"
    (tmp_path / "consumers.yml").write_text(broken)
    status, text = api("POST", "/users", {"username": "bob", "firstname": "B", "lastname": "S"})
    assert status == 400
    assert (
        f"{tmp_path / 'consumers.yml'}:6:" in text and "consumers.alice.credentials[1].keySecretHash" in text
    )
    assert (tmp_path / "consumers.yml").read_text() == broken
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_config_sections_are_written_in_place_and_checked(api, tmp_path):
    config = tmp_path / "gateway.config.yml"
    assert api("GET", "/pipelines/api")[1]["apiEndpoints"] == ["api"]
    assert api("PUT", "/service-endpoints/extra", {"url": "http://127.0.0.1:10"}) == (201, None)
    status, text = api("PUT", "/pipelines/api", {"apiEndpoints": ["nope"], "policies": []})
    assert status == 400 and "pipelines.api.apiEndpoints[0]" in text
    assert api("DELETE", "/api-endpoints/nope") == (404, "")
    loaded = load_config(config, StepState())
    assert set(loaded.service_endpoints) == {"backend", "extra"}
    assert config.read_text().startswith("# the gateway\n")


def test_a_json_config_stays_json(tmp_path):
    config = tmp_path / "gateway.config.json"
    document = yaml.safe_load(
        one_pipeline("http://127.0.0.1:9", "- proxy: [{action: {serviceEndpoint: backend}}]").replace(
            "{port}", "8080"
        )
    )
    config.write_text(json.dumps(document))
    api = AdminApi(config, tmp_path / "consumers.yml")
    assert api.handle(AdminRequest("PUT", "/policies/cors")).status == 200
    assert "cors" in json.loads(config.read_text())["policies"]


def test_hand_written_yaml_booleans_read_as_the_gateway_reads_them(api, tmp_path):
    (tmp_path / "consumers.yml").write_text("consumers:\n  carl:\n    active: no\n")
    assert api("GET", "/users/carl")[1]["isActive"] is False
    assert api("PUT", "/users/carl/status", {"status": True}) == (200, {"status": "Activated"})
    assert (
        consumers_of(tmp_path).by_credential == {}
        and "active: true" in (tmp_path / "consumers.yml").read_text()
    )


def test_what_the_gateway_would_read_otherwise_is_refused(api):
    bob(api)
    status, text = api(
        "POST", "/credentials", {"consumerId": "bob", "type": "key-auth", "credential": {"keyId": "${HOME}"}}
    )
    assert status == 400 and "variable" in text
    assert api("POST", "/scopes", {"scopes": ["${X}"]})[0] == 400
    assert api("POST", "/users", {"username": "u" * 600, "firstname": "U", "lastname": "V"})[0] == 400


def test_an_entry_added_to_a_flow_style_section_stays_readable(api, tmp_path):
    # `apiEndpoints: {api: {host: '*'}}` is flow style; ruamel would write `pathRegex: ^/v[12]?/x`
    # into it unquoted, which PyYAML cannot read.
    endpoint = {"host": "*", "pathRegex": "^/v[12]?/items$", "methods": ["GET", "POST"]}
    status, text = api("PUT", "/api-endpoints/odd", endpoint)
    assert status == 201, text
    assert api("GET", "/api-endpoints/odd") == (200, endpoint)
