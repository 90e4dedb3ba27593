#!/usr/bin/env python3
"""Print a JWT signed with a private key (RS256 for RSA keys, ES256 for P-256 keys).

Usage: mint_token.py [--key keys/privKey.pem] [--sub demo-user] [--expires-in 3600] [--claim k=v ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def mint(key_file: Path, sub: str = "demo-user", expires_in: int = 3600, **claims: object) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + expires_in, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", type=Path, default=Path("keys/privKey.pem"))
    parser.add_argument("--sub", default="demo-user")
    parser.add_argument("--expires-in", type=int, default=3600, help="seconds")
    parser.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    claims = dict(c.split("=", 1) for c in args.claim)
    print(mint(args.key, args.sub, args.expires_in, **claims))


if __name__ == "__main__":
    main()
