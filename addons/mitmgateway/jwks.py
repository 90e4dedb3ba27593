"""Keys that verify tokens: one configured key, a JWKS file, or an identity provider's JWKS URL.

Every key carries the algorithms its type allows (RSA: RS*/PS*; EC: the ES algorithm of its
curve; Ed25519/Ed448: EdDSA; a secret that is no key at all: HS*), narrowed by the JWK's ``alg``
when it names one, so ``alg: none`` and HS/RS confusion never verify. Keys not meant for
signatures (``use: enc``) and shared secrets published in a key set (``kty: oct``) are skipped.

A provider's key set is fetched in a worker thread (the event loop never waits on the network
beyond ``jwksTimeout``), kept until its ``Cache-Control: max-age`` runs out (then refetched in the
background while the cached keys keep serving), refetched at once for a token whose ``kid`` it
does not know (at most once per ``jwksRefreshInterval``), and kept when the provider is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .fetching import fetch
from .outages import Outage

logger = logging.getLogger("mitmgateway")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
DEFAULT_MAX_AGE = 3600.0
"""How long a fetched key set is trusted when the provider sends no max-age."""
MAX_JWKS_BYTES = 1 << 20
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class VerificationKey:
    key: Any
    """A cryptography public key, or bytes for an HMAC secret."""
    algorithms: tuple[str, ...]


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The algorithms a key's type allows; () for a type that cannot verify tokens."""
    if isinstance(key, bytes):
        return HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return (EC_ALGORITHMS[key.curve.name],)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def parse_jwks(document: Any) -> dict[str | None, VerificationKey]:
    """The signature keys of a JWKS document by ``kid``; raises ValueError if it is none."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWKS document (a JSON object with a "keys" list)')
    keys: dict[str | None, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue
        try:
            key = jwt.PyJWK(dict(jwk), jwk.get("alg")).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            logger.warning("JWKS key %r skipped: %s", jwk.get("kid"), e)
            continue
        allowed = algorithms_for(key)  # () for a private key published by mistake: skipped
        if "alg" in jwk:
            allowed = tuple(a for a in allowed if a == jwk["alg"])
        if allowed:
            keys[jwk.get("kid")] = VerificationKey(key, allowed)
    return keys


class KeySet:
    """Fixed keys (a configured key, or a JWKS file)."""

    def __init__(self, keys: Mapping[str | None, VerificationKey]) -> None:
        self.keys = dict(keys)

    def get(self, kid: str | None) -> VerificationKey | None:
        if kid in self.keys:
            return self.keys[kid]
        # A lone key verifies a token without kid; a lone key without kid (a PEM key), any token.
        if len(self.keys) == 1 and (kid is None or None in self.keys):
            return next(iter(self.keys.values()))
        return None


# Its own threads: a fetch must not wait behind other work sent to threads (password checks).
_FETCHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jwks")


def _fetch(uri: str, timeout: float) -> tuple[bytes, str]:
    """GET the JWKS (its body, its Cache-Control)."""
    request = urllib.request.Request(uri, headers={"Accept": "application/json"})
    body, headers = fetch(request, timeout, MAX_JWKS_BYTES)
    return body, headers.get("Cache-Control", "")


class RemoteKeySet(KeySet):
    """An identity provider's JWKS, fetched and refreshed as the module docstring says."""

    def __init__(self, uri: str, refresh_interval: float, timeout: float) -> None:
        super().__init__({})
        self.uri = uri
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.expires = 0.0
        self.last_attempt = float("-inf")
        self.outage = Outage(f"JWKS from {uri}")
        self._refresh: asyncio.Task[None] | None = None

    def get(self, kid: str | None) -> VerificationKey | None:
        if self.keys and time.monotonic() >= self.expires and self._may_fetch():
            self._start_fetch()  # stale: refetch in the background, serve the cached keys meanwhile
        return super().get(kid)

    def fetch_for_unknown_kid(self) -> asyncio.Task[None] | None:
        """The fetch to wait for before refusing a kid the cached set lacks, if one may run."""
        if self._refresh is not None and not self._refresh.done():
            return self._refresh
        return self._start_fetch() if self._may_fetch() else None

    def _may_fetch(self) -> bool:
        return time.monotonic() - self.last_attempt >= self.refresh_interval

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self.last_attempt = time.monotonic()
            self._refresh = asyncio.get_running_loop().create_task(self._fetch_keys())
        return self._refresh

    async def _fetch_keys(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            body, cache_control = await asyncio.wait_for(
                loop.run_in_executor(_FETCHER, _fetch, self.uri, self.timeout), self.timeout
            )
            keys = parse_jwks(json.loads(body))
            if not keys:
                raise ValueError("no key in it can verify signatures")
        except Exception as e:  # whatever the provider sent: keep the cached keys, never fail requests
            self.outage.failed(e, f"keeping {len(self.keys)} cached key(s)")
            return
        self.outage.recovered()
        match = _MAX_AGE.search(cache_control)
        self.expires = time.monotonic() + (float(match.group(1)) if match else DEFAULT_MAX_AGE)
        self.keys = keys
