"""jwt: verify a JSON Web Token against a configured key, a JWKS file or a provider's JWKS URL.

The key decides which algorithms can ever verify (see jwks.py): ``alg: none`` and HS/RS
confusion (a token HMAC-signed with the public key) never pass.

A signature check costs about 100 µs of CPU, as much as the rest of the gateway's work on a
request, and clients send the same token again and again: each step remembers the tokens it has
verified (bounded, least recently used first out) until they expire, so a repeated token costs
one dict lookup. The cache belongs to the step as built, so a reload (maybe with a new key) starts
afresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..answers import make_answer
from ..config.errors import ConfigError, KeyPath
from ..config.schema import header_name, non_negative, option, positive, require_mapping
from ..context import RequestContext
from ..credentials import CredentialType
from ..headers import scheme_credential, set_values
from ..jwks import KeySet, RemoteKeySet, VerificationKey, algorithms_for, parse_jwks
from .base import BuildContext, Policy, register_policy

logger = logging.getLogger(__name__)

VERIFIED_TOKENS = 10_000
"""Verified tokens remembered per step."""
REMEMBER_SECONDS = 300.0
"""The longest a verified token is remembered (a token without ``exp`` stays valid; this only
bounds the entry)."""


def _claim_headers(value: Any, path: KeyPath) -> tuple[tuple[str, str], ...]:
    mapping = require_mapping(value, path)
    pairs = []
    for claim, header in mapping.items():
        pairs.append((str(claim), header_name(header, path.key(claim))))
    return tuple(pairs)


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
    jwks_uri: str | None = option("jwksUri", None)
    jwks_refresh_interval: int = option("jwksRefreshInterval", 10, parse=non_negative)
    jwks_timeout: int = option("jwksTimeout", 2, parse=positive)
    forward_claims: tuple[tuple[str, str], ...] = option("forwardClaims", (), parse=_claim_headers)
    """(claim, header) pairs: each verified claim sent upstream in its header."""
    remove_token: bool = option("removeToken", False)
    """Remove the token (the Authorization header, or the header or query parameter it came in)
    before the request goes upstream."""


def load_verification_key(material: bytes, path: KeyPath) -> VerificationKey:
    """A PEM public key or certificate, else an HMAC secret; its type pins the algorithms."""
    if b"-----BEGIN" not in material:
        if not material.strip():
            raise ConfigError(path, "is empty")
        return VerificationKey(material, algorithms_for(material))
    if b"PRIVATE KEY-----" in material:
        raise ConfigError(path, "is a private key: give the gateway the public key only")
    try:
        if b"-----BEGIN CERTIFICATE" in material:
            key: Any = x509.load_pem_x509_certificate(material).public_key()
        else:
            key = serialization.load_pem_public_key(material)
    except ValueError as e:
        raise ConfigError(path, f"not a valid PEM public key or certificate: {e}") from e
    allowed = algorithms_for(key)
    if not allowed:
        raise ConfigError(path, f"unsupported key type {type(key).__name__}")
    return VerificationKey(key, allowed)


def _configured_keys(action: JwtAction, build: BuildContext) -> KeySet:
    given = [action.secret_or_public_key, action.secret_or_public_key_file, action.jwks_uri]
    if sum(v is not None for v in given) != 1:
        raise ConfigError(build.path, "give one of secretOrPublicKey, secretOrPublicKeyFile or jwksUri")
    if action.jwks_uri is not None:
        path = build.path.key("jwksUri")
        if not action.jwks_uri.startswith(("https://", "http://")):
            raise ConfigError(path, f"must be an https:// (or http://) URL, got {action.jwks_uri!r}")
        settings = (action.jwks_uri, action.jwks_refresh_interval, action.jwks_timeout)
        # Kept across reloads: a reload must not send every token back to the provider.
        return build.step_state(settings, lambda: build.state.remote_key_set(*settings))
    if action.secret_or_public_key is not None:
        path = build.path.key("secretOrPublicKey")
        return KeySet({None: load_verification_key(action.secret_or_public_key.encode(), path)})
    path = build.path.key("secretOrPublicKeyFile")
    file = build.config_dir / str(action.secret_or_public_key_file)
    try:
        material = file.read_bytes()
    except OSError as e:
        raise ConfigError(path, f"cannot read {file}: {e.strerror or e}") from e
    if material.lstrip().startswith(b"{"):
        try:
            keys = parse_jwks(json.loads(material))
        except ValueError as e:
            raise ConfigError(path, f"{file}: {e}") from e
        if not keys:
            raise ConfigError(path, f"{file}: the JWKS holds no key that can verify signatures")
        return KeySet(keys)
    return KeySet({None: load_verification_key(material, path)})


class UnknownKeyError(jwt.InvalidTokenError):
    """No configured or published key matches the token's kid."""


class UnknownConsumerError(jwt.InvalidTokenError):
    """checkCredentialExistence: the sub names no active jwt credential of an active consumer."""


class NotNumericDateError(jwt.InvalidTokenError):
    """exp, nbf or iat is not a JSON number (RFC 7519 2: NumericDate), which pyjwt lets pass as a
    numeric string."""


NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
FAR_FUTURE = 1e15

# Most specific first: several of pyjwt's errors derive from others.
_FAILURE_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (UnknownKeyError, "unknown_key"),
    (NotNumericDateError, "not_numeric_date"),
    (UnknownConsumerError, "unknown_consumer"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed"),
)


def _is_numeric_date(value: Any) -> bool:
    # A JSON number: not a string, a boolean, null, NaN or an infinity.
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    """exp and nbf against `now` (epoch seconds), as pyjwt judges them against its clock; raises
    jwt.InvalidTokenError."""
    for claim in NUMERIC_DATE_CLAIMS:
        if claim in claims and not _is_numeric_date(claims[claim]):
            raise NotNumericDateError(f"{claim} is not a number")
    if "exp" in claims and claims["exp"] <= now - leeway:
        raise jwt.ExpiredSignatureError("Signature has expired")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")


def failure_reason(error: jwt.InvalidTokenError) -> str:
    """A short, stable name for why a token was refused (a metrics label, a log field)."""
    for kind, reason in _FAILURE_REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid"


@register_policy
class JwtPolicy(Policy):
    name = "jwt"
    authenticates = True
    # checkCredentialExistence: a token's sub names one.
    credential = CredentialType("jwt", id_key="sub")
    Action = JwtAction

    def __init__(self, action: JwtAction, build: BuildContext) -> None:
        self.action = action
        # As in Express Gateway: the token's sub must name an active jwt credential of an active
        # consumer (looked up per request, so a deactivation applies at once).
        self.consumers = build.consumers if action.check_credential_existence else None
        if self.consumers is not None and build.consumers.kept_in is None:
            logger.warning(
                "%s: checkCredentialExistence is true but there is no consumers file: every token "
                "will be refused (add consumers.yml, or set it to false)",
                build.path,
            )
        if action.jwt_extractor != "authBearer" and not action.jwt_extractor_field:
            raise ConfigError(
                build.path.key("jwtExtractorField"),
                f"is required with jwtExtractor {action.jwt_extractor}",
            )
        self.keys = _configured_keys(action, build)
        self.algorithms = None if action.algorithms is None else frozenset(action.algorithms)
        self.audiences = frozenset(action.audience or ())
        if self.algorithms is not None and not isinstance(self.keys, RemoteKeySet):
            allowed = list(dict.fromkeys(a for key in self.keys.keys.values() for a in key.algorithms))
            for i, algorithm in enumerate(action.algorithms):
                if algorithm not in allowed:
                    raise ConfigError(
                        build.path.key("algorithms").index(i),
                        f"{algorithm} cannot be verified with this key (it allows {', '.join(allowed)})",
                    )
        # Only the gateway speaks for the token: the pipeline removes a client's own copies of
        # these before any step runs (even when a condition skips this one).
        self.identity_headers = tuple(header for _claim, header in action.forward_claims)
        self.claim_headers = tuple((claim, header.encode()) for claim, header in action.forward_claims)
        # exp and nbf are judged by the request's time (`check_times`), not by pyjwt's clock.
        self.options = {
            "verify_aud": action.audience is not None,
            "verify_iat": False,
            "verify_exp": False,
            "verify_nbf": False,
        }
        # Token → (claims, until when it is remembered, epoch seconds).
        self.verified: LRUCache[str, tuple[Mapping[str, Any], float]] = LRUCache(maxsize=VERIFIED_TOKENS)
        self.scheme = (
            "bearer" if action.jwt_extractor == "authBearer" else (action.jwt_extractor_field or "").lower()
        )

    def extract_token(self, ctx: RequestContext) -> str | None:
        extractor = self.action.jwt_extractor
        if extractor == "header":
            return ctx.header_credential(self.action.jwt_extractor_field or "")
        if extractor == "query":
            return ctx.query_credential(self.action.jwt_extractor_field or "")
        return scheme_credential(ctx.header_credential("authorization") or "", self.scheme)

    def verify(self, token: str, key: VerificationKey | None, now: float) -> Mapping[str, Any]:
        """The token's claims if `key` verifies it at `now`; raises jwt.InvalidTokenError if not."""
        if key is None:
            raise UnknownKeyError("no key for this token's kid")
        algorithms = (
            key.algorithms if self.algorithms is None else [a for a in key.algorithms if a in self.algorithms]
        )
        claims = jwt.decode(
            token,
            key.key,
            algorithms=algorithms,
            audience=list(self.action.audience) if self.action.audience else None,
            issuer=list(self.action.issuer) if self.action.issuer else None,
            leeway=self.action.clock_tolerance,
            options=self.options,  # type: ignore[arg-type]
        )
        check_times(claims, now, self.action.clock_tolerance)
        # Remember it until it expires (the same leeway as verification gives), and never long.
        until = now + REMEMBER_SECONDS
        # (An exp beyond any clock, 10**400 say, is remembered the longest: no float holds it.)
        if "exp" in claims and claims["exp"] < FAR_FUTURE:
            until = min(until, claims["exp"] + self.action.clock_tolerance)
        if until > now:
            self.verified[token] = (claims, until)
        return claims

    def handle(self, ctx: RequestContext) -> Coroutine[Any, Any, None] | None:
        token = self.extract_token(ctx)
        if not token:
            ctx.decision.jwt_failure = "missing"
            self._refuse(ctx, None)
            return None
        cached = self.verified.get(token)
        if cached is not None:
            if ctx.now < cached[1]:
                self._accept(ctx, cached[0])
                return None
            del self.verified[token]  # expired: verified again, which refuses it
        if not token.isascii():  # a JWT is base64url and dots; anything else is not one
            self._reject(ctx, jwt.DecodeError("not ASCII"))
            return None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as e:
            self._reject(ctx, e)
            return None
        keys = self.keys
        key = keys.get(kid)
        if key is None and isinstance(keys, RemoteKeySet):
            # A kid the cached set does not know: maybe the provider rotated its keys.
            fetch = keys.fetch_for_unknown_kid()
            if fetch is not None:
                return self._verify_after(ctx, token, kid, keys, fetch)
        self._verify(ctx, token, key)
        return None

    async def _verify_after(
        self, ctx: RequestContext, token: str, kid: str | None, keys: RemoteKeySet, fetch: Awaitable[None]
    ) -> None:
        # Shielded: this request going away must not cancel the fetch other requests wait for.
        started = time.time_ns()
        await asyncio.shield(fetch)
        if ctx.timeline is not None:
            ctx.timeline.note("jwks fetch", started, **{"url.full": keys.uri})
        self._verify(ctx, token, keys.get(kid))

    def _verify(self, ctx: RequestContext, token: str, key: VerificationKey | None) -> None:
        try:
            claims = self.verify(token, key, ctx.now)
        except jwt.InvalidTokenError as e:
            self._reject(ctx, e)
            return
        except jwt.PyJWTError as e:  # a key pyjwt will not use (e.g. a PEM-like HMAC secret)
            self._reject(ctx, jwt.InvalidTokenError(str(e)))
            return
        self._accept(ctx, claims)

    def accept_recorded(self, ctx: RequestContext, user: Mapping[str, Any], consumer: str | None) -> None:
        # The recorded claims are judged as a verified token's would be here (this step's
        # audience, issuer and clock; the signature was checked when they were recorded), then
        # go through what follows (the consumer's lookup in this config, forwardClaims...).
        claims = {k: v for k, v in user.items() if k not in ("id", "scopes")} if consumer else user
        try:
            check_times(claims, ctx.now, self.action.clock_tolerance)
            self._check_audience_and_issuer(claims)
        except jwt.InvalidTokenError as e:
            self._reject(ctx, e)
            return
        self._accept(ctx, claims)

    def _check_audience_and_issuer(self, claims: Mapping[str, Any]) -> None:
        if self.action.audience is not None:
            audience = claims.get("aud")
            given = [audience] if isinstance(audience, str) else list(audience or ())
            if self.audiences.isdisjoint(given):
                raise jwt.InvalidAudienceError("Audience doesn't match")
        if self.action.issuer is not None and claims.get("iss") not in self.action.issuer:
            raise jwt.InvalidIssuerError("Invalid issuer")

    def _accept(self, ctx: RequestContext, claims: Mapping[str, Any]) -> None:
        if self.consumers is None:
            ctx.user = claims
        else:
            sub = claims.get("sub")
            found = self.consumers.find("jwt", str(sub)) if sub is not None else None
            if found is None:
                self._reject(ctx, UnknownConsumerError("no active consumer has this sub"))
                return
            if not ctx.authenticate(found, claims):
                return
        request = ctx.flow.request
        if self.claim_headers:
            set_values(request, ((header, claims.get(claim)) for claim, header in self.claim_headers))
        if self.action.remove_token:
            self._remove_token(request)

    def _remove_token(self, request: Any) -> None:
        extractor, field = self.action.jwt_extractor, self.action.jwt_extractor_field or ""
        if extractor == "query":
            request.query.pop(field, None)
        else:
            request.headers.pop("Authorization" if extractor in ("authBearer", "authScheme") else field, None)

    def _reject(self, ctx: RequestContext, error: jwt.InvalidTokenError) -> None:
        ctx.decision.jwt_failure = failure_reason(error)
        self._refuse(ctx, 'Bearer error="invalid_token"')

    def _refuse(self, ctx: RequestContext, challenge: str | None) -> None:
        if not self.action.pass_through:
            headers = {"WWW-Authenticate": challenge or "Bearer"}
            ctx.answer(make_answer(ctx.flow.request, 401, "Unauthorized", headers))
