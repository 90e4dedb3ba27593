#!/usr/bin/env python3
"""Generate a demo signing key pair: keys/privKey.pem (git-ignored) and keys/pubKey.pem.

Usage: gen_keys.py [--dir keys] [--type rsa|ec] [--force]
The gateway only ever reads the public key; the private key signs demo tokens (mint_token.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def generate(directory: Path, kind: str = "rsa", force: bool = False) -> tuple[Path, Path]:
    private_path, public_path = directory / "privKey.pem", directory / "pubKey.pem"
    if private_path.exists() and public_path.exists() and not force:
        return private_path, public_path
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("keys"))
    parser.add_argument("--type", choices=("rsa", "ec"), default="rsa")
    parser.add_argument("--force", action="store_true", help="replace an existing pair")
    args = parser.parse_args()
    private_path, public_path = generate(args.dir, args.type, args.force)
    print(f"private key: {private_path}\npublic key:  {public_path}")


if __name__ == "__main__":
    main()
