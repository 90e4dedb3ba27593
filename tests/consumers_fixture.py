"""A consumers.yml for tests: alice holds the API key k1:topsecret."""

from __future__ import annotations

from pathlib import Path

from mitmgateway.policies.key_auth import hash_api_key_secret


def write_consumers(directory: Path) -> None:
    (directory / "consumers.yml").write_text(
        "consumers:\n  alice:\n    credentials:\n"
        f"      - {{type: key-auth, keyId: k1, keySecretHash: '{hash_api_key_secret('topsecret')}'}}\n"
    )
