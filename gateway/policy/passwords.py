"""App password hashes: argon2id (default), bcrypt or scrypt; make and verify.

Formats: argon2's PHC string (``$argon2id$v=19$m=...``), bcrypt's ``$2b$...``,
and scrypt as ``$scrypt$ln=15,r=8,p=1$<salt b64>$<key b64>`` (hashlib, no
extra library). Verification is constant-time and slow on purpose: callers on
the reactor run it in a thread. Pure apart from that CPU cost.

`DummyHashes` holds, for each scheme and parameter set the configured apps use, a hash of
no one's password made with exactly those parameters: an unknown app name is checked
against one of them, so it costs what a wrong password for a real app costs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable

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


def parameters(password_hash: str) -> tuple[object, ...] | None:
    """What a check of `password_hash` costs: its scheme and parameters (None if unknown).

    Two hashes with the same parameters take the same time to check a password against.
    """
    try:
        if password_hash.startswith("$argon2"):
            from argon2 import extract_parameters

            p = extract_parameters(password_hash)
            return (
                "argon2",
                p.type.name,
                p.version,
                p.memory_cost,
                p.time_cost,
                p.parallelism,
                p.salt_len,
                p.hash_len,
            )
        if password_hash.startswith(("$2a$", "$2b$", "$2y$")):
            return ("bcrypt", int(password_hash.split("$")[2]))
        if password_hash.startswith("$scrypt$"):
            _, _, params, salt, key = password_hash.split("$")
            values = dict(item.split("=") for item in params.split(","))
            ln, r, p_ = int(values["ln"]), int(values["r"]), int(values["p"])
            return ("scrypt", ln, r, p_, len(_unb64(salt)), len(_unb64(key)))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return None


def make_like(password_hash: str, password: str) -> str:
    """A hash of `password` with the scheme and parameters of `password_hash`."""
    secret = password.encode("utf-8")
    found = parameters(password_hash)
    if found is None:
        raise ValueError("not a password hash mailgate can check")
    if found[0] == "argon2":
        from argon2 import PasswordHasher, extract_parameters

        return PasswordHasher.from_parameters(extract_parameters(password_hash)).hash(secret)
    if found[0] == "bcrypt":
        import bcrypt

        prefix = b"2a" if password_hash.startswith("$2a$") else b"2b"
        cost = found[1]
        assert isinstance(cost, int)
        salt = bcrypt.gensalt(rounds=cost, prefix=prefix)
        return bcrypt.hashpw(secret, salt).decode("ascii")
    _, ln, r, p, salt_len, key_len = found
    assert isinstance(ln, int) and isinstance(r, int) and isinstance(p, int)
    assert isinstance(salt_len, int) and isinstance(key_len, int)
    salt = os.urandom(salt_len)
    key = hashlib.scrypt(secret, salt=salt, n=2**ln, r=r, p=p, maxmem=256 * 2**20, dklen=key_len)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(key)}"


class DummyHashes:
    """One dummy hash per scheme and parameter set in `hashes` (the configured apps' hashes).

    Made when the config is loaded (start-up, reload), never on first use; a reload reuses
    the dummies of `previous` whose parameters are still in use. `for_name` picks, for an
    unknown app name, a dummy by a keyed hash of the name: the same name always costs the
    same, and unknown names spread over the parameter sets as the real apps do.
    """

    def __init__(self, hashes: Iterable[str], previous: DummyHashes | None = None) -> None:
        self.key: bytes = previous.key if previous is not None else os.urandom(32)
        kept = previous.by_parameters if previous is not None else {}
        self.by_parameters: dict[tuple[object, ...], str] = {}
        self._choices: list[str] = []  # one entry per app, so the spread follows the apps
        for password_hash in hashes:
            found = parameters(password_hash)
            if found is None:
                continue
            if found not in self.by_parameters:
                self.by_parameters[found] = kept.get(found) or make_like(
                    password_hash, base64.b64encode(os.urandom(18)).decode("ascii")
                )
            self._choices.append(self.by_parameters[found])

    def for_name(self, name: str) -> str:
        """The dummy to check an unknown app name's password against ("" when no apps)."""
        if not self._choices:
            return ""
        digest = hmac.new(self.key, name.encode("utf-8", "replace"), hashlib.sha256).digest()
        return self._choices[int.from_bytes(digest[:8], "big") % len(self._choices)]
