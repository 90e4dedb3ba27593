"""basic-auth: ``Authorization: Basic`` checked against bcrypt or argon2 hashes in the consumers file.

A password hash is slow on purpose (a quarter of a second for bcrypt at cost 12), so the check runs
in a worker thread, never on the event loop, and a successful check is remembered for a few
minutes (keyed by the username and a SHA-256 of password and stored hash, bounded), so a client
repeating its credentials does not pay it again. An unknown username is checked against a dummy
bcrypt hash (see `password_matches` for what timing can still tell). 401 with
``WWW-Authenticate: Basic``; 403 when the consumer lacks a scope the apiEndpoint requires. Put a
rate-limit step before it: every wrong password costs a hash.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError
from cachetools import TTLCache

from ..answers import UNAUTHORIZED, make_answer
from ..config.schema import option
from ..consumers import Authenticated
from ..context import RequestContext
from ..credentials import CredentialType
from ..headers import scheme_credential
from .base import BuildContext, Policy, register_policy

REMEMBER_SECONDS = 300
REMEMBERED = 10_000


# Its own threads: password checks must not hold up the other work sent to threads (JWKS).
_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-check")
MAX_PENDING_CHECKS = 64
_ARGON2 = PasswordHasher()  # holds only its parameters: one serves every check


def hash_password(password: str) -> str:
    """The form a password is stored in: bcrypt at cost 12 (the cost `_dummy_hash` has)."""
    return bcrypt.hashpw(password.encode("utf-8", "surrogateescape"), bcrypt.gensalt(12)).decode()


@functools.cache
def _dummy_hash() -> str:
    return hash_password("no such user")


def password_matches(password: str, stored: str | None) -> bool:
    """Checks `password` against a bcrypt or argon2 hash (slow: call it off the event loop).

    With no stored hash (no such user) it checks against a dummy bcrypt hash of cost 12 and
    returns False: users whose hashes have that cost cannot be told from unknown names by timing
    (users with other costs or argon2 parameters can).
    """
    if stored is None:
        password_matches(password, _dummy_hash())
        return False
    if stored.startswith("$argon2"):
        try:
            return _ARGON2.verify(stored, password)
        except (Argon2Error, InvalidHashError):
            return False
    try:
        return bcrypt.checkpw(password.encode("utf-8", "surrogateescape"), stored.encode())
    except ValueError:
        return False


@dataclass(frozen=True)
class BasicAuthAction:
    pass_through: bool = option("passThrough", False)
    realm: str = option("realm", "api")


@register_policy
class BasicAuthPolicy(Policy):
    name = "basic-auth"
    authenticates = True
    credential = CredentialType(
        "basic-auth",
        id_key="username",
        secret_key="passwordHash",
        is_stored_form=lambda stored: stored.startswith(("$2a$", "$2b$", "$2y$", "$argon2")),
        stored_form="a bcrypt ($2b$...) or argon2 ($argon2id$...) hash",
    )
    Action = BasicAuthAction

    def __init__(self, action: BasicAuthAction, build: BuildContext) -> None:
        self.action = action
        self.consumers = build.consumers
        self.challenge = f'Basic realm="{action.realm}", charset="UTF-8"'
        self.pending = 0
        self.remembered: TTLCache[tuple[str, str], bool] = TTLCache(
            maxsize=REMEMBERED, ttl=REMEMBER_SECONDS, timer=time.monotonic
        )

    @staticmethod
    def credentials(ctx: RequestContext) -> tuple[str, str] | None:
        encoded = scheme_credential(ctx.header_credential("authorization") or "", "basic")
        if encoded is None:
            return None
        try:
            username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:  # not base64, not UTF-8
            return None
        return (username, password) if sep else None

    def handle(self, ctx: RequestContext) -> Coroutine[Any, Any, None] | None:
        given = self.credentials(ctx)
        if given is None:
            self._refuse(ctx, "missing")
            return None
        username, password = given
        found = self.consumers.find("basic-auth", username)
        stored = found.credential.secret_hash if found is not None else None
        memo = (username, hashlib.sha256(f"{password}\0{stored}".encode()).hexdigest())
        if found is not None and memo in self.remembered:
            ctx.authenticate(found)
            return None
        return self._check(ctx, found, password, stored, memo)

    async def _check(
        self,
        ctx: RequestContext,
        found: Authenticated | None,
        password: str,
        stored: str | None,
        memo: tuple[str, str],
    ) -> None:
        if self.pending >= MAX_PENDING_CHECKS:
            # A password-guessing flood must not queue without end behind the hasher.
            ctx.decision.auth_failure = "overloaded"
            ctx.answer(make_answer(ctx.flow.request, 503, "Service Unavailable", {"Retry-After": "1"}))
            return
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(_HASHER, password_matches, password, stored)
        finally:
            self.pending -= 1
        if ok and found is not None:
            self.remembered[memo] = True
            ctx.authenticate(found)
            return
        self._refuse(ctx, "invalid password")

    def _refuse(self, ctx: RequestContext, reason: str) -> None:
        ctx.decision.auth_failure = reason
        if not self.action.pass_through:
            headers = {"WWW-Authenticate": self.challenge}
            ctx.answer(make_answer(ctx.flow.request, 401, UNAUTHORIZED, headers))
