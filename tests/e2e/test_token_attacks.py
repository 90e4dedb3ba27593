"""Token attacks through a running gateway (#7): each is a 401 and never reaches the upstream.

The unit tests (test_jwt.py) cover each refusal in detail; these send the same attacks over the
wire to a real mitmdump, a JWKS file with two keys behind it, and check the upstream saw nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from test_jwks import Signer

from conftest import one_pipeline
from harness import JwksServer, admin_get, b64url, bearer, free_port


def unsigned(header: dict, payload: dict) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())


def hs256(secret: bytes, header: dict, payload: dict) -> str:
    signing_input = unsigned({"alg": "HS256", **header}, payload)
    return signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def public_key_bytes(signer: Signer, encoding: serialization.Encoding) -> bytes:
    return signer.private.public_key().public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)


def modulus(signer: Signer) -> bytes:
    n = signer.jwk["n"]
    return base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))


def claims(**extra) -> dict:  # type: ignore[no-untyped-def]
    return {"sub": "alice", "aud": "orders", "exp": int(time.time()) + 600, **extra}


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {"genuine": Signer("genuine"), "attacker": Signer("attacker")}


@dataclass
class Kit:
    """What an attacker holds: the genuine public key (it is public), a key of their own, and a
    JWKS endpoint of their own that publishes it."""

    genuine: Signer
    attacker: Signer
    attacker_jwks: JwksServer


@pytest.fixture
def kit(signers) -> Iterator[Kit]:
    server = JwksServer()
    server.document = {"keys": [signers["attacker"].jwk]}
    yield Kit(signers["genuine"], signers["attacker"], server)
    server.stop()


@pytest.fixture
def guarded(start_gateway, upstreams, signers, tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [signers["genuine"].jwk]}))
    action = (
        "secretOrPublicKeyFile: jwks.json, checkCredentialExistence: false, audience: orders, "
        "forwardClaims: {sub: X-User, role: X-Role}"
    )
    steps = f"- jwt: [{{action: {{{action}}}}}]\n- proxy: [{{action: {{serviceEndpoint: backend}}}}]"
    admin_port = free_port()
    gateway = start_gateway(
        one_pipeline(upstreams["orders"].url, steps, extra=f"admin: {{port: {admin_port}}}\n")
    )
    gateway.admin_port = admin_port
    return gateway


# A verifier confused by `alg: HS256` takes the key material it holds for HMAC's secret: the
# public key as its PEM file (what a PEM-configured gateway reads), its DER form, or the modulus.
ATTACKS: dict[str, Callable[[Kit], str]] = {
    "alg none": lambda k: unsigned({"alg": "none", "typ": "JWT"}, claims()) + ".",
    "alg None, kid of the genuine key": lambda k: unsigned({"alg": "None", "kid": "genuine"}, claims()) + ".",
    "HS256 signed with the RS public key's PEM": lambda k: hs256(
        public_key_bytes(k.genuine, serialization.Encoding.PEM), {"kid": "genuine"}, claims()
    ),
    "HS256 signed with the RS public key's PEM, no kid": lambda k: hs256(
        public_key_bytes(k.genuine, serialization.Encoding.PEM), {}, claims()
    ),
    "HS256 signed with the RS public key's DER": lambda k: hs256(
        public_key_bytes(k.genuine, serialization.Encoding.DER), {"kid": "genuine"}, claims()
    ),
    "HS256 signed with the JWK's modulus": lambda k: hs256(modulus(k.genuine), {"kid": "genuine"}, claims()),
    "HS256 signed with the JWK's n as text": lambda k: hs256(
        k.genuine.jwk["n"].encode(), {"kid": "genuine"}, claims()
    ),
    "kid pointing to a key the gateway does not hold": lambda k: k.attacker.token(aud="orders"),
    "kid of the genuine key, signed by another": lambda k: pyjwt.encode(
        claims(), k.attacker.private, "RS256", headers={"kid": "genuine"}
    ),
    # A gateway that fetched keys from the token's own jku would find the attacker's key there.
    "jku pointing to the attacker's JWKS": lambda k: pyjwt.encode(
        claims(), k.attacker.private, "RS256", headers={"kid": "attacker", "jku": k.attacker_jwks.url}
    ),
    "jku to the attacker's JWKS, kid of the genuine key": lambda k: pyjwt.encode(
        claims(), k.attacker.private, "RS256", headers={"kid": "genuine", "jku": k.attacker_jwks.url}
    ),
    "jwk header carrying the attacker's key": lambda k: pyjwt.encode(
        claims(), k.attacker.private, "RS256", headers={"kid": "attacker", "jwk": k.attacker.jwk}
    ),
    "expired": lambda k: k.genuine.token(aud="orders", exp=int(time.time()) - 60),
    # RFC 7519: a NumericDate is a JSON number; pyjwt alone takes a numeric string.
    "exp as a numeric string": lambda k: k.genuine.token(aud="orders", exp=str(int(time.time()) + 600)),
    "another audience": lambda k: k.genuine.token(aud="customers"),
    "no audience": lambda k: k.genuine.token(),
}


def test_the_attacks_are_well_formed(kit):
    """Each forged token is one a confused verifier would accept: the attacks can fail."""
    pem = public_key_bytes(kit.genuine, serialization.Encoding.PEM)
    forged = ATTACKS["HS256 signed with the RS public key's PEM"](kit)
    signing_input, _, signature = forged.rpartition(".")
    expected = b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    assert hmac.compare_digest(signature, expected)
    # What a gateway that followed jku would do: fetch that JWKS and verify with the key found.
    with urllib.request.urlopen(kit.attacker_jwks.url, timeout=5) as response:
        document = json.loads(response.read())
    token = ATTACKS["jku pointing to the attacker's JWKS"](kit)
    key = pyjwt.PyJWKSet.from_dict(document)[pyjwt.get_unverified_header(token)["kid"]]
    assert pyjwt.decode(token, key.key, ["RS256"], audience="orders")["sub"] == "alice"


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_tokens_are_refused_and_never_forwarded(guarded, kit, attack):
    genuine = kit.genuine.token(aud="orders")
    before = json.loads(guarded.send("/", headers=bearer(genuine)).body)["served"]
    fetched = kit.attacker_jwks.fetches
    reply = guarded.send("/", headers=bearer(ATTACKS[attack](kit)))
    assert (reply.status, reply.text) == (401, "Unauthorized")
    after = json.loads(guarded.send("/", headers=bearer(genuine)).body)["served"]
    assert after == before + 1  # only the genuine request in between reached the upstream
    assert kit.attacker_jwks.fetches == fetched, "the gateway fetched keys from the token's jku"


def test_hs256_with_the_public_key_against_a_pem_configured_gateway(start_gateway, upstreams, kit, tmp_path):
    """The same confusion where the gateway holds the very PEM bytes the attacker signs with."""
    (tmp_path / "genuine.pem").write_bytes(public_key_bytes(kit.genuine, serialization.Encoding.PEM))
    action = "secretOrPublicKeyFile: genuine.pem, checkCredentialExistence: false, audience: orders"
    steps = f"- jwt: [{{action: {{{action}}}}}]\n- proxy: [{{action: {{serviceEndpoint: backend}}}}]"
    gateway = start_gateway(one_pipeline(upstreams["orders"].url, steps))
    genuine = kit.genuine.token(aud="orders")
    before = json.loads(gateway.send("/", headers=bearer(genuine)).body)["served"]
    for attack in [name for name in ATTACKS if name.startswith("HS256")]:
        reply = gateway.send("/", headers=bearer(ATTACKS[attack](kit)))
        assert (reply.status, reply.text) == (401, "Unauthorized"), attack
    after = json.loads(gateway.send("/", headers=bearer(genuine)).body)["served"]
    assert after == before + 1, "a forged token reached the upstream"


def test_forwarded_claims_cannot_inject_headers(guarded, signers):
    token = signers["genuine"].token(aud="orders", sub="alice\r\nX-Admin: true", role="user\nX-Role: admin")
    reply = guarded.send("/", headers=bearer(token, **{"X-User": "admin", "X-Role": "admin"}))
    assert reply.status == 200
    seen = json.loads(reply.body)["headers"]
    assert "X-Admin" not in seen
    assert seen["X-User"] == "alice  X-Admin: true"  # one line, the client's own X-User gone
    assert seen["X-Role"] == "user X-Role: admin"


def test_a_date_that_is_no_number_is_counted_under_its_own_reason(guarded, kit):
    token = ATTACKS["exp as a numeric string"](kit)
    assert guarded.send("/", headers=bearer(token)).status == 401
    metrics = admin_get(guarded.admin_port, "/metrics")[1]
    assert 'mitmgateway_jwt_failures_total{pipeline="api",reason="not_numeric_date"} 1.0' in metrics
