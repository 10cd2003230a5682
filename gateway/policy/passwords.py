"""App password hashes: argon2id (default), bcrypt or scrypt; make and verify.

Formats: argon2's PHC string (``$argon2id$v=19$m=...``), bcrypt's ``$2b$...``,
and scrypt as ``$scrypt$ln=15,r=8,p=1$<salt b64>$<key b64>`` (hashlib, no
extra library). Verification is constant-time and slow on purpose: callers on
the reactor run it in a thread. Pure apart from that CPU cost.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCHEMES = ("argon2", "bcrypt", "scrypt")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def make_hash(password: str, scheme: str = "argon2") -> str:
    secret = password.encode("utf-8")
    if scheme == "argon2":
        from argon2 import PasswordHasher

        return PasswordHasher().hash(secret)
    if scheme == "bcrypt":
        import bcrypt

        return bcrypt.hashpw(secret, bcrypt.gensalt()).decode("ascii")
    if scheme == "scrypt":
        salt = os.urandom(16)
        key = hashlib.scrypt(secret, salt=salt, n=2**15, r=8, p=1, maxmem=64 * 2**20, dklen=32)
        return f"$scrypt$ln=15,r=8,p=1${_b64(salt)}${_b64(key)}"
    raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def verify(password_hash: str, password: str) -> bool:
    """True when `password` matches; False for a mismatch or a malformed hash."""
    secret = password.encode("utf-8")
    try:
        if password_hash.startswith("$argon2"):
            from argon2 import PasswordHasher
            from argon2.exceptions import Argon2Error, InvalidHashError

            try:
                return PasswordHasher().verify(password_hash, secret)
            except (Argon2Error, InvalidHashError):
                return False
        if password_hash.startswith(("$2a$", "$2b$", "$2y$")):
            import bcrypt

            return bcrypt.checkpw(secret, password_hash.encode("ascii"))
        if password_hash.startswith("$scrypt$"):
            _, _, params, salt, key = password_hash.split("$")
            values = dict(item.split("=") for item in params.split(","))
            n, r, p = 2 ** int(values["ln"]), int(values["r"]), int(values["p"])
            expected = _unb64(key)
            derived = hashlib.scrypt(
                secret, salt=_unb64(salt), n=n, r=r, p=p, maxmem=256 * 2**20, dklen=len(expected)
            )
            return hmac.compare_digest(derived, expected)
    except (ValueError, KeyError, TypeError):
        return False
    return False
