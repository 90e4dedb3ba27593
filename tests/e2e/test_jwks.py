"""The jwt policy against an identity provider's JWKS (a local HTTP server) and JWKS files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import one_pipeline
from gateway_unit import gateway_for, make_flow, request_status
from harness import JwksServer, bearer, wait_until


class Signer:
    """A key pair published in a JWKS under `kid`."""

    def __init__(self, kid: str, kind: str = "rsa", use: str = "sig") -> None:
        self.kid = kid
        if kind == "rsa":
            self.private = rsa.generate_private_key(65537, 2048)
            self.algorithm = "RS256"
            jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"
            jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "use": use}

    def token(self, sub: str = "alice", **claims: Any) -> str:
        payload = {"sub": sub, "exp": int(time.time()) + 600, "iat": int(time.time()), **claims}
        return pyjwt.encode(payload, self.private, self.algorithm, headers={"kid": self.kid})


@pytest.fixture
def provider() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.stop()


def jwt_gateway(start_gateway, upstreams, provider: JwksServer, extra_action: str = ""):  # type: ignore[no-untyped-def]
    action = (
        f"jwksUri: '{provider.url}', jwksRefreshInterval: 1, jwksTimeout: 1, "
        f"checkCredentialExistence: false{extra_action}"
    )
    steps = f"- jwt: [{{action: {{{action}}}}}]\n- proxy: [{{action: {{serviceEndpoint: backend}}}}]"
    return start_gateway(one_pipeline(upstreams["customers"].url, steps))


def test_rs256_and_es256_keys_rotation_and_forwarded_claims(start_gateway, upstreams, provider):
    rsa_key, ec_key, encryption_key = Signer("r1"), Signer("e1", "ec"), Signer("x1", use="enc")
    provider.document = {"keys": [rsa_key.jwk, ec_key.jwk, encryption_key.jwk]}
    extra = ", forwardClaims: {sub: X-User-Id, roles: X-Roles}, removeToken: true"
    gateway = jwt_gateway(start_gateway, upstreams, provider, extra)

    reply = gateway.send(headers=bearer(rsa_key.token(roles=["admin", "ops"]), **{"X-User-Id": "mallory"}))
    assert reply.status == 200, reply.text
    seen = {k.lower(): v for k, v in json.loads(reply.body)["headers"].items()}
    assert seen["x-user-id"] == "alice"
    assert seen["x-roles"] == '["admin","ops"]'
    assert "authorization" not in seen
    assert gateway.send(headers=bearer(ec_key.token())).status == 200
    assert gateway.send(headers=bearer(encryption_key.token())).status == 401, "use: enc never verifies"

    rotated = Signer("r2")
    provider.document = {"keys": [rsa_key.jwk, rotated.jwk]}
    time.sleep(1.1)  # jwksRefreshInterval
    assert gateway.send(headers=bearer(rotated.token())).status == 200, "a new kid is fetched"
    assert provider.fetches == 2
    for i in range(5):  # made-up kids right after: no new fetch within jwksRefreshInterval
        assert gateway.send(headers=bearer(Signer(f"made-up-{i}").token())).status == 401
    assert provider.fetches == 2


def test_provider_down_or_slow_keeps_the_cached_keys(start_gateway, upstreams, provider):
    known = Signer("r1")
    provider.document = {"keys": [known.jwk]}
    gateway = jwt_gateway(start_gateway, upstreams, provider)
    assert gateway.send(headers=bearer(known.token())).status == 200

    provider.stop()
    time.sleep(1.1)
    assert gateway.send(headers=bearer(known.token(sub="bob"))).status == 200, "cached keys keep working"
    unknown = gateway.send(headers=bearer(Signer("r9").token()))
    assert unknown.status == 401 and 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    assert wait_until(lambda: "unavailable" in gateway.log() and "keeping 1 cached key(s)" in gateway.log())

    provider.start()
    provider.delay = 5
    time.sleep(1.1)
    started = time.monotonic()
    assert gateway.send(headers=bearer(Signer("r8").token())).status == 401
    assert time.monotonic() - started < 3, "jwksTimeout bounds the wait"
    assert gateway.send(headers=bearer(known.token(sub="carol"))).status == 200


def test_keys_are_refetched_when_max_age_runs_out(start_gateway, upstreams, provider):
    old, new = Signer("r1"), Signer("r2")
    provider.document = {"keys": [old.jwk]}
    provider.cache_control = "public, max-age=1"
    gateway = jwt_gateway(start_gateway, upstreams, provider)
    assert gateway.send(headers=bearer(old.token())).status == 200
    provider.document = {"keys": [new.jwk]}  # the provider retired the old key
    time.sleep(1.2)
    gateway.send(headers=bearer(old.token(sub="x")))  # served from the stale set, refetch starts
    assert wait_until(lambda: gateway.send(headers=bearer(old.token(sub="y"))).status == 401, timeout=5)
    assert gateway.send(headers=bearer(new.token())).status == 200


def test_a_jwks_file_as_secret_or_public_key_file(tmp_path):
    signer, other = Signer("a"), Signer("b", "ec")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [signer.jwk, other.jwk]}))
    steps = (
        "- jwt: [{action: {secretOrPublicKeyFile: jwks.json, checkCredentialExistence: false}}]\n"
        "- proxy: [{action: {serviceEndpoint: backend}}]"
    )
    config = one_pipeline("http://127.0.0.1:9", steps).replace("{port}", "8080")

    def status(token: str) -> int:
        return request_status(gateway, make_flow(headers=bearer(token)))

    with gateway_for(tmp_path, config) as gateway:
        assert status(signer.token()) == 200
        assert status(other.token()) == 200
        assert status(Signer("a").token()) == 401  # same kid, another key
        assert status(Signer("c").token()) == 401  # a kid the file does not hold

    # A file with one key: it verifies tokens without kid, and those naming it, as from a jwksUri.
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [signer.jwk]}))
    unnamed = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, signer.private, "RS256")
    elsewhere = pyjwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 60}, signer.private, "RS256", headers={"kid": "other"}
    )
    with gateway_for(tmp_path, config) as gateway:
        assert [status(t) for t in (signer.token(), unnamed, elsewhere)] == [200, 200, 401]
