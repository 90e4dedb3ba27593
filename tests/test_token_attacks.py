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

import jwt as pyjwt
import pytest

from conftest import one_pipeline
from test_jwks import Signer, bearer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())


def claims(**extra) -> dict:  # type: ignore[no-untyped-def]
    return {"sub": "alice", "aud": "orders", "exp": int(time.time()) + 600, **extra}


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {"genuine": Signer("genuine"), "attacker": Signer("attacker")}


@pytest.fixture
def guarded(start_gateway, upstreams, signers, tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [signers["genuine"].jwk]}))
    action = (
        "secretOrPublicKeyFile: jwks.json, checkCredentialExistence: false, audience: orders, "
        "forwardClaims: {sub: X-User, role: X-Role}"
    )
    steps = f"- jwt: [{{action: {{{action}}}}}]\n- proxy: [{{action: {{serviceEndpoint: backend}}}}]"
    return start_gateway(one_pipeline(upstreams["orders"].url, steps))


ATTACKS = {
    "alg none": lambda s: unsigned({"alg": "none", "typ": "JWT"}, claims()) + ".",
    "alg None, kid of the genuine key": lambda s: unsigned({"alg": "None", "kid": "genuine"}, claims()) + ".",
    "HS256 signed with the RS public key": lambda s: (
        lambda signing: (
            signing
            + "."
            + b64(hmac.new(json.dumps(s["genuine"].jwk).encode(), signing.encode(), hashlib.sha256).digest())
        )
    )(unsigned({"alg": "HS256", "kid": "genuine"}, claims())),
    "kid pointing to a key the gateway does not hold": lambda s: s["attacker"].token(aud="orders"),
    "kid of the genuine key, signed by another": lambda s: pyjwt.encode(
        claims(), s["attacker"].private, "RS256", headers={"kid": "genuine"}
    ),
    "jku pointing to the attacker's JWKS": lambda s: pyjwt.encode(
        claims(),
        s["attacker"].private,
        "RS256",
        headers={"kid": "attacker", "jku": "http://127.0.0.1:9/jwks.json"},
    ),
    "expired": lambda s: s["genuine"].token(aud="orders", exp=int(time.time()) - 60),
    "another audience": lambda s: s["genuine"].token(aud="customers"),
    "no audience": lambda s: s["genuine"].token(),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_tokens_are_refused_and_never_forwarded(guarded, signers, attack):
    before = json.loads(guarded.send("/", headers=bearer(signers["genuine"].token(aud="orders"))).body)[
        "served"
    ]
    reply = guarded.send("/", headers=bearer(ATTACKS[attack](signers)))
    assert (reply.status, reply.text) == (401, "Unauthorized")
    after = json.loads(guarded.send("/", headers=bearer(signers["genuine"].token(aud="orders"))).body)[
        "served"
    ]
    assert after == before + 1  # only the genuine request in between reached the upstream


def test_forwarded_claims_cannot_inject_headers(guarded, signers):
    token = signers["genuine"].token(aud="orders", sub="alice\r\nX-Admin: true", role="user\nX-Role: admin")
    reply = guarded.send("/", headers=bearer(token, **{"X-User": "admin", "X-Role": "admin"}))
    assert reply.status == 200
    seen = json.loads(reply.body)["headers"]
    assert "X-Admin" not in seen
    assert seen["X-User"] == "alice  X-Admin: true"  # one line, the client's own X-User gone
    assert seen["X-Role"] == "user X-Role: admin"
