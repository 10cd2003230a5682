"""Credentials: read from the environment or a file, never printed.

A `Secret` hides its value from ``repr``/``str`` so that a log line, an
exception text or a traceback that includes it shows ``<secret>``.
`resolve_password` reads the one an upstream's config refers to.
Pure apart from reading the named variable or file.
"""

from __future__ import annotations

import os
import stat

from gateway.config.model import UpstreamConfig
from gateway.errors import SecretError


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def from_env(variable: str, *, environ: dict[str, str] | None = None) -> Secret:
    env = os.environ if environ is None else environ
    value = env.get(variable)
    if value is None or value == "":
        raise SecretError(f"environment variable {variable} is not set or empty")
    return Secret(value)


def from_file(path: str) -> Secret:
    """Read a secret file; refuse one that group or others can read (like ssh does)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SecretError(f"secret file {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"secret file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"secret file {path}: cannot read ({type(exc).__name__})") from None
    if not value:
        raise SecretError(f"secret file {path} is empty")
    return Secret(value)


def resolve_password(upstream: UpstreamConfig) -> Secret | None:
    """Read the upstream's password from its variable or file (None: no AUTH configured)."""
    try:
        if upstream.password_env:
            return from_env(upstream.password_env)
        if upstream.password_file:
            return from_file(upstream.password_file)
    except SecretError as exc:
        raise SecretError(f"upstreams.{upstream.name}: {exc}") from None
    return None
