"""jwt: verify a JSON Web Token against a configured key, algorithms pinned by the key's type.

The key decides which algorithms can ever verify: an RSA public key admits RS*/PS*, an EC key the
ES algorithm of its curve, an Ed25519/Ed448 key EdDSA, and a secret that is no key at all HS*.
``alg: none`` and HS/RS confusion (a token HMAC-signed with the public key) therefore never pass.

A signature check costs about 100 µs of CPU, as much as the rest of the gateway's work on a
request, and clients send the same token again and again: each step remembers the tokens it has
verified (bounded, least recently used first out) until they expire, so a repeated token costs
one dict lookup. The cache belongs to the step as built, so a reload (maybe with a new key) starts
afresh.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cachetools import TLRUCache
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..answers import make_answer
from ..config.errors import ConfigError, KeyPath
from ..config.schema import non_negative, option
from ..pipeline import RequestContext
from .base import BuildContext, Policy, register_policy

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

VERIFIED_TOKENS = 10_000
"""Verified tokens remembered per step."""
REMEMBER_SECONDS = 300.0
"""The longest a verified token is remembered (a token without ``exp`` stays valid; this only
bounds the entry)."""

VerificationKey = Any  # a cryptography public key, or bytes for an HMAC secret


@dataclass(frozen=True)
class JwtAction:
    secret_or_public_key: str | None = option("secretOrPublicKey", None)
    secret_or_public_key_file: str | None = option("secretOrPublicKeyFile", None)
    jwt_extractor: Literal["authBearer", "header", "query", "authScheme"] = option(
        "jwtExtractor", "authBearer"
    )
    jwt_extractor_field: str | None = option("jwtExtractorField", None)
    audience: tuple[str, ...] | None = option("audience", None)
    issuer: tuple[str, ...] | None = option("issuer", None)
    algorithms: tuple[str, ...] | None = option("algorithms", None)
    check_credential_existence: bool = option("checkCredentialExistence", True)
    pass_through: bool = option("passThrough", False)
    clock_tolerance: int = option("clockTolerance", 0, parse=non_negative)


def load_verification_key(material: bytes, path: KeyPath) -> tuple[VerificationKey, tuple[str, ...]]:
    """The key to verify with and the algorithms its type allows."""
    if b"-----BEGIN" not in material:
        return material, HMAC_ALGORITHMS
    if b"PRIVATE KEY-----" in material:
        raise ConfigError(path, "is a private key: give the gateway the public key only")
    try:
        if b"-----BEGIN CERTIFICATE" in material:
            key: Any = x509.load_pem_x509_certificate(material).public_key()
        else:
            key = serialization.load_pem_public_key(material)
    except ValueError as e:
        raise ConfigError(path, f"not a valid PEM public key or certificate: {e}") from e
    if isinstance(key, rsa.RSAPublicKey):
        return key, RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return key, (EC_ALGORITHMS[key.curve.name],)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key, ("EdDSA",)
    raise ConfigError(path, f"unsupported key type {type(key).__name__}")


def _read_key(action: JwtAction, build: BuildContext) -> tuple[bytes, KeyPath]:
    if (action.secret_or_public_key is None) == (action.secret_or_public_key_file is None):
        raise ConfigError(build.path, "give either secretOrPublicKey or secretOrPublicKeyFile")
    if action.secret_or_public_key is not None:
        return action.secret_or_public_key.encode(), build.path.key("secretOrPublicKey")
    path = build.path.key("secretOrPublicKeyFile")
    file = build.config_dir / str(action.secret_or_public_key_file)
    try:
        return file.read_bytes(), path
    except OSError as e:
        raise ConfigError(path, f"cannot read {file}: {e.strerror or e}") from e


# Most specific first: several of pyjwt's errors derive from others.
_FAILURE_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed"),
)


def failure_reason(error: jwt.InvalidTokenError) -> str:
    """A short, stable name for why a token was refused (a metrics label, a log field)."""
    for kind, reason in _FAILURE_REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid"


@register_policy
class JwtPolicy(Policy):
    name = "jwt"
    Action = JwtAction

    def __init__(self, action: JwtAction, build: BuildContext) -> None:
        self.action = action
        if action.check_credential_existence:
            raise ConfigError(
                build.path.key("checkCredentialExistence"),
                "true (the default) needs consumers and their credentials, which this gateway "
                "does not keep yet: set it to false",
            )
        if action.jwt_extractor != "authBearer" and not action.jwt_extractor_field:
            raise ConfigError(
                build.path.key("jwtExtractorField"),
                f"is required with jwtExtractor {action.jwt_extractor}",
            )
        material, key_path = _read_key(action, build)
        self.key, allowed = load_verification_key(material, key_path)
        if action.algorithms is None:
            self.algorithms = list(allowed)
        else:
            for i, algorithm in enumerate(action.algorithms):
                if algorithm not in allowed:
                    raise ConfigError(
                        build.path.key("algorithms").index(i),
                        f"{algorithm} cannot be verified with this key (it allows {', '.join(allowed)})",
                    )
            self.algorithms = list(action.algorithms)
        self.options = {"verify_aud": action.audience is not None, "verify_iat": False}
        self.verified: TLRUCache[str, tuple[Mapping[str, Any], float]] = TLRUCache(
            maxsize=VERIFIED_TOKENS, ttu=lambda _token, entry, _now: entry[1], timer=time.monotonic
        )
        self.scheme = (
            "bearer" if action.jwt_extractor == "authBearer" else (action.jwt_extractor_field or "").lower()
        )

    def extract_token(self, ctx: RequestContext) -> str | None:
        request = ctx.flow.request
        extractor = self.action.jwt_extractor
        if extractor == "header":
            return request.headers.get(self.action.jwt_extractor_field or "")
        if extractor == "query":
            # A credential in the URL: the access log must not write it out.
            ctx.record.setdefault("secretQueryParams", []).append(self.action.jwt_extractor_field)
            return request.query.get(self.action.jwt_extractor_field or "")
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        return token.strip() if scheme.lower() == self.scheme and token.strip() else None

    def verify(self, token: str) -> Mapping[str, Any]:
        """The token's claims if it is valid now; raises jwt.InvalidTokenError if not."""
        cached = self.verified.get(token)
        if cached is not None:
            return cached[0]
        claims = self._check_signature_and_claims(token)
        # Remember it until it expires (the same leeway as verification gives), and never long:
        # pyjwt reads exp with int(), so read it the same way (it may be a numeric string).
        lifetime = REMEMBER_SECONDS
        if "exp" in claims:
            lifetime = min(lifetime, int(claims["exp"]) + self.action.clock_tolerance - time.time())
        if lifetime > 0:
            self.verified[token] = (claims, time.monotonic() + lifetime)
        return claims

    def _check_signature_and_claims(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self.key,
            algorithms=self.algorithms,
            audience=list(self.action.audience) if self.action.audience else None,
            issuer=list(self.action.issuer) if self.action.issuer else None,
            leeway=self.action.clock_tolerance,
            options=self.options,  # type: ignore[arg-type]
        )

    def handle(self, ctx: RequestContext) -> None:
        token = self.extract_token(ctx)
        error = None
        if token:
            try:
                ctx.user = self.verify(token)
                return
            except jwt.InvalidTokenError as e:
                error = 'Bearer error="invalid_token"'
                ctx.record["jwtFailure"] = failure_reason(e)
        else:
            ctx.record["jwtFailure"] = "missing"
        if not self.action.pass_through:
            challenge = error or "Bearer"
            ctx.answer(make_answer(ctx.flow.request, 401, "Unauthorized", {"WWW-Authenticate": challenge}))
