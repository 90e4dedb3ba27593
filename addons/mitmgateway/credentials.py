"""Credential types: what a consumer's credential of each kind holds, declared by the auth policy
that checks it (as a Kong plugin owns its credential entity). The consumers file reads them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CredentialType:
    name: str
    """The credential's ``type`` in consumers.yml (the policy's name)."""
    id_key: str
    """The key naming the credential (a token's ``sub``, an API key's ``keyId``...)."""
    secret_key: str | None = None
    """The key holding the hash of its secret, if it has one."""
    is_stored_form: Callable[[str], bool] = lambda _stored: True
    """Whether a value of `secret_key` is a hash as stored (never the secret itself)."""
    stored_form: str = ""
    """How that hash is written, for the error when it is not."""


CREDENTIAL_TYPES: dict[str, CredentialType] = {}


def register_credential_type(credential: CredentialType) -> None:
    CREDENTIAL_TYPES[credential.name] = credential
