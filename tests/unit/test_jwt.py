"""The jwt policy: what verifies, what is refused, and which configs are refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway_unit import gateway_for, make_flow, request_status
from harness import b64url, bearer, unplaced
from mitmgateway.config.assemble import load_config
from mitmgateway.config.errors import ConfigError
from mitmgateway.policies import StepState

CONFIG = """\
http: {{port: 8080}}
apiEndpoints: {{api: {{host: api.local}}}}
serviceEndpoints: {{backend: {{url: 'http://127.0.0.1:9001'}}}}
policies: [jwt, proxy]
pipelines:
  main:
    apiEndpoints: [api]
    policies:
      - jwt: [{{action: {{checkCredentialExistence: false, {action}}}}}]
      - proxy: [{{action: {{serviceEndpoint: backend}}}}]
"""


def private_key(keys):
    return serialization.load_pem_private_key(keys[0].read_bytes(), None)


def rs256(keys, **claims) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 60, **claims}
    return pyjwt.encode(payload, private_key(keys), algorithm=claims.pop("alg", "RS256"))


@pytest.fixture
def gateway_with(tmp_path):
    return lambda action: gateway_for(tmp_path, CONFIG.format(action=action))


def token_status(gateway, token: str) -> int:  # type: ignore[no-untyped-def]
    return request_status(gateway, make_flow(headers=bearer(token)))


def test_valid_rs256_token_passes_and_claims_reach_metadata(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        flow = make_flow(headers=bearer(rs256(rsa_keys, role="admin")))
        assert request_status(gateway, flow) == 200
        assert flow.metadata["gateway"]["user"]["role"] == "admin"
        assert flow.request.host == "127.0.0.1"


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda keys: "", id="empty"),
        pytest.param(lambda keys: "garbage", id="garbage"),
        pytest.param(lambda keys: rs256(keys).rsplit(".", 1)[0], id="two-segments"),
        pytest.param(
            lambda keys: b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(b'{"sub":"alice"}') + ".",
            id="alg-none",
        ),
        pytest.param(
            # HS/RS confusion: HMAC-signed with the RSA public key as the secret.
            lambda keys: (
                lambda signing_input: (
                    signing_input
                    + "."
                    + b64url(hmac.new(keys[1].read_bytes(), signing_input.encode(), hashlib.sha256).digest())
                )
            )(b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps({"sub": "alice"}).encode())),
            id="hs256-with-public-key",
        ),
        pytest.param(lambda keys: rs256(keys, exp=int(time.time()) - 5), id="expired"),
        pytest.param(lambda keys: rs256(keys, nbf=int(time.time()) + 60), id="not-yet-valid"),
        pytest.param(lambda keys: rs256(keys, exp="tomorrow"), id="exp-not-a-number"),
        pytest.param(
            lambda keys: rs256(keys)[:-3] + ("AAA" if rs256(keys)[-3:] != "AAA" else "BBB"),
            id="bad-signature",
        ),
    ],
)
def test_refused_tokens_are_401(gateway_with, rsa_keys, make_token):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        flow = make_flow(headers=bearer(make_token(rsa_keys)))
        assert request_status(gateway, flow) == 401
        assert flow.response.text == "Unauthorized"
        assert flow.response.headers["WWW-Authenticate"].startswith("Bearer")
        assert flow.request.host == "api.local"  # never routed upstream
        assert flow.metadata["gateway"]["answeredBy"] == "jwt"


def test_token_signed_by_another_key_is_401(gateway_with, rsa_keys, tmp_path):
    from gen_keys import generate

    other = generate(tmp_path / "other", "rsa")
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        assert token_status(gateway, rs256(other)) == 401


def test_missing_token_has_bare_bearer_challenge(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        flow = make_flow(headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
        assert request_status(gateway, flow) == 401
        assert flow.response.headers["WWW-Authenticate"] == "Bearer"


def test_scheme_is_case_insensitive_and_whitespace_tolerated(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        flow = make_flow(headers={"Authorization": f"  bEaReR   {rs256(rsa_keys)}  "})
        assert request_status(gateway, flow) == 200


def test_ps256_accepted_with_rsa_key_and_aud_unchecked_when_not_configured(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        token = pyjwt.encode(
            {"sub": "a", "aud": "x", "iss": "y", "iat": int(time.time()) + 600},
            private_key(rsa_keys),
            algorithm="PS256",
        )
        assert token_status(gateway, token) == 200


def test_clock_tolerance(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}, clockTolerance: 30") as gateway:
        assert token_status(gateway, rs256(rsa_keys, exp=int(time.time()) - 5)) == 200
        assert token_status(gateway, rs256(rsa_keys, exp=int(time.time()) - 60)) == 401


def test_audience_and_issuer(gateway_with, rsa_keys):
    with gateway_with(
        f"secretOrPublicKeyFile: {rsa_keys[1]}, audience: orders, issuer: [idp-a, idp-b]"
    ) as gateway:
        assert token_status(gateway, rs256(rsa_keys, aud="orders", iss="idp-b")) == 200
        assert token_status(gateway, rs256(rsa_keys, aud="billing", iss="idp-a")) == 401
        assert token_status(gateway, rs256(rsa_keys, aud="orders", iss="evil")) == 401
        assert token_status(gateway, rs256(rsa_keys, iss="idp-a")) == 401


@pytest.mark.parametrize(
    ("action", "request_kwargs"),
    [
        ("jwtExtractor: header, jwtExtractorField: x-token", lambda t: {"headers": {"X-Token": t}}),
        ("jwtExtractor: query, jwtExtractorField: access_token", lambda t: {"path": f"/x?access_token={t}"}),
        (
            "jwtExtractor: authScheme, jwtExtractorField: JWT",
            lambda t: {"headers": {"Authorization": f"jwt {t}"}},
        ),
    ],
)
def test_extractors(gateway_with, rsa_keys, action, request_kwargs):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}, {action}") as gateway:
        assert request_status(gateway, make_flow(**request_kwargs(rs256(rsa_keys)))) == 200
        # The default place no longer counts.
        assert token_status(gateway, rs256(rsa_keys)) == 401


def test_pass_through_lets_anonymous_requests_continue(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}, passThrough: true") as gateway:
        anonymous = make_flow()
        assert request_status(gateway, anonymous) == 200
        assert "user" not in anonymous.metadata["gateway"]
        bad = make_flow(headers=bearer("garbage"))
        assert request_status(gateway, bad) == 200


def test_ec_key_takes_es256_only(gateway_with, ec_keys, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {ec_keys[1]}") as gateway:
        es256 = pyjwt.encode({"sub": "a"}, private_key(ec_keys), algorithm="ES256")
        assert token_status(gateway, es256) == 200
        assert token_status(gateway, rs256(rsa_keys)) == 401


def test_hmac_secret_takes_hs_only(gateway_with, rsa_keys):
    with gateway_with("secretOrPublicKey: 'a shared secret of thirty-two bytes!'") as gateway:
        hs256 = pyjwt.encode({"sub": "a"}, "a shared secret of thirty-two bytes!", algorithm="HS256")
        assert token_status(gateway, hs256) == 200
        assert token_status(gateway, rs256(rsa_keys)) == 401


@pytest.mark.parametrize(
    ("action", "path", "reason"),
    [
        (
            "secretOrPublicKeyFile: KEY, algorithms: [HS256]",
            "action.algorithms[0]",
            "HS256 cannot be verified with this key (it allows RS256, RS384, RS512, PS256, PS384, PS512)",
        ),
        (
            "secretOrPublicKeyFile: KEY, algorithms: [none]",
            "action.algorithms[0]",
            "none cannot be verified with this key (it allows RS256, RS384, RS512, PS256, PS384, PS512)",
        ),
        (
            "secretOrPublicKeyFile: PRIVATE",
            "action.secretOrPublicKeyFile",
            "is a private key: give the gateway the public key only",
        ),
        ("secretOrPublicKeyFile: missing.pem", "action.secretOrPublicKeyFile", "cannot read"),
        ("audience: x", "action", "give one of secretOrPublicKey, secretOrPublicKeyFile or jwksUri"),
        (
            "secretOrPublicKey: s, jwtExtractor: header",
            "action.jwtExtractorField",
            "is required with jwtExtractor header",
        ),
        (
            "secretOrPublicKey: s, jwtExtractor: cookie",
            "action.jwtExtractor",
            "must be one of 'authBearer', 'header', 'query', 'authScheme', got string 'cookie'",
        ),
    ],
)
def test_config_errors(tmp_path, rsa_keys, action, path, reason):
    text = CONFIG.format(action=action.replace("KEY", str(rsa_keys[1])).replace("PRIVATE", str(rsa_keys[0])))
    file = tmp_path / "gateway.config.yml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, StepState(), {})
    # (Where in the file: tests/unit/test_config.py.)
    assert unplaced(str(info.value)).startswith(f"{file}: pipelines.main.policies[0].jwt[0].{path}: {reason}")


def test_verified_tokens_are_remembered_until_they_expire(gateway_with, rsa_keys):
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        policy = gateway.config.pipelines["main"].steps[0].policy
        exp = int(time.time()) + 2
        token = rs256(rsa_keys, exp=exp)
        assert token_status(gateway, token) == 200
        assert token in policy.verified
        assert token_status(gateway, token) == 200
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert token_status(gateway, forged) == 401
        assert forged not in policy.verified
        while time.time() <= exp:
            time.sleep(0.1)
        assert token_status(gateway, token) == 401
        assert token not in policy.verified


def test_the_token_cache_holds_at_most_its_bound(gateway_with, rsa_keys, monkeypatch):
    from mitmgateway.policies import jwt as jwt_policy

    # The bound as shipped is 10,000 per step; a smaller one shows the same eviction in a moment.
    monkeypatch.setattr(jwt_policy, "VERIFIED_TOKENS", 20)
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        policy = gateway.config.pipelines["main"].steps[0].policy
        tokens = [rs256(rsa_keys, sub=f"client-{n}") for n in range(60)]
        assert all(token_status(gateway, t) == 200 for t in tokens)
        assert len(policy.verified) == 20
        assert tokens[-1] in policy.verified and tokens[0] not in policy.verified  # least recent out
        assert token_status(gateway, tokens[0]) == 200  # evicted, so verified again


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 3600)},  # pyjwt alone accepts a numeric string
        {"nbf": "0"},
        {"iat": "1767225600"},
        {"nbf": False},
        {"iat": [1]},
        {"exp": None},
        {"nbf": None},
    ],
    ids=["exp-string", "nbf-string", "iat-string", "nbf-boolean", "iat-list", "exp-null", "nbf-null"],
)
def test_a_date_claim_that_is_no_json_number_is_refused_with_its_own_reason(gateway_with, rsa_keys, claims):
    # RFC 7519 2: NumericDate is a JSON number (Express Gateway refuses the others too).
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        policy = gateway.config.pipelines["main"].steps[0].policy
        token = rs256(rsa_keys, **claims)
        flow = make_flow(headers=bearer(token))
        assert request_status(gateway, flow) == 401
        assert flow.metadata["gateway"]["jwtFailure"] == "not_numeric_date"
        assert token not in policy.verified
        assert token_status(gateway, rs256(rsa_keys, iat=int(time.time()), nbf=1.5)) == 200


def test_an_exp_beyond_any_clock_is_accepted_not_a_gateway_error(gateway_with, rsa_keys):
    # Python reads 10**400 exactly, and no float holds it: remembering the token must not fail.
    with gateway_with(f"secretOrPublicKeyFile: {rsa_keys[1]}") as gateway:
        assert token_status(gateway, rs256(rsa_keys, exp=10**400)) == 200
