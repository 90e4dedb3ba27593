"""key-auth: an API key ``KEYID:SECRET`` from a header (with its scheme) or a query parameter.

As Express Gateway's: ``Authorization: apiKey KEYID:SECRET`` by default, or ``?apiKey=...``. The key
id names a key-auth credential in the consumers file, whose secret is stored as a SHA-256 hash and
compared in constant time (an unknown id costs the same comparison, so timing does not tell ids
apart). 401 when no valid key, 403 when the consumer lacks a scope the apiEndpoint requires.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from ..answers import UNAUTHORIZED, make_answer
from ..config.schema import option
from ..context import RequestContext
from ..credentials import CredentialType
from ..headers import scheme_credential
from .base import BuildContext, Policy, register_policy

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")


def hash_api_key_secret(secret: str) -> str:
    # SHA-256 is enough for a long random secret (a password would need bcrypt or argon2).
    # surrogateescape: a key from a URL may hold bytes that are not UTF-8.
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def api_key_secret_matches(secret: str, stored: str) -> bool:
    # Constant time: how much of a guess matched must not show in how long the answer takes.
    return hmac.compare_digest(hash_api_key_secret(secret).encode(), stored.encode())


# Compared against when the key id is unknown, so that both cases take the same time.
_NO_SUCH_KEY = hash_api_key_secret("no such key")
KEY_AUTH_CREDENTIAL = CredentialType(
    "key-auth",
    id_key="keyId",
    secret_key="keySecretHash",
    is_stored_form=lambda stored: _SHA256.match(stored) is not None,
    stored_form="sha256:HEX",
)


@dataclass(frozen=True)
class KeyAuthAction:
    api_key_header: str = option("apiKeyHeader", "Authorization")
    api_key_header_scheme: str = option("apiKeyHeaderScheme", "apiKey")
    api_key_field: str = option("apiKeyField", "apiKey")
    disable_headers: bool = option("disableHeaders", False)
    disable_headers_scheme: bool = option("disableHeadersScheme", False)
    disable_query_param: bool = option("disableQueryParam", False)


@register_policy
class KeyAuthPolicy(Policy):
    name = "key-auth"
    Action = KeyAuthAction
    authenticates = True
    credential = KEY_AUTH_CREDENTIAL

    def __init__(self, action: KeyAuthAction, build: BuildContext) -> None:
        self.action = action
        self.consumers = build.consumers
        self.scheme = action.api_key_header_scheme.lower()

    def extract_key(self, ctx: RequestContext) -> str | None:
        action = self.action
        request = ctx.flow.request
        if not action.disable_headers and (value := ctx.header_credential(action.api_key_header)):
            if action.disable_headers_scheme:
                return value.strip()
            if (key := scheme_credential(value, self.scheme)) is not None:
                return key
        if not action.disable_query_param and action.api_key_field in request.query:
            return ctx.query_credential(action.api_key_field) or None
        return None

    def handle(self, ctx: RequestContext) -> None:
        key = self.extract_key(ctx)
        key_id, _, secret = (key or "").partition(":")
        found = self.consumers.find("key-auth", key_id) if key_id else None
        stored = found.credential.secret_hash if found is not None else None
        if api_key_secret_matches(secret, stored or _NO_SUCH_KEY) and found is not None:
            ctx.authenticate(found)
            return
        ctx.decision.auth_failure = "missing" if key is None else "invalid key"
        ctx.answer(make_answer(ctx.flow.request, 401, UNAUTHORIZED))
