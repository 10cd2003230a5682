"""SASL bearer-token mechanisms for SMTP AUTH: XOAUTH2 and OAUTHBEARER (RFC 7628).

Both carry an OAuth 2.0 access token in the initial response. When the server
rejects the token it sends a ``334`` error challenge (base64 JSON with a
``status``) and waits for the client's answer — an empty line for XOAUTH2, a
single ``%x01`` for OAUTHBEARER (RFC 7628 3.2.3) — before its final ``535``.

The encoded responses contain the token: callers must never log them.
Pure: no reactor, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json

MECHANISMS = ("XOAUTH2", "OAUTHBEARER")  # in order of preference


def choose_mechanism(offered: set[str]) -> str | None:
    """The bearer mechanism to use among those the server offers after TLS."""
    return next((m for m in MECHANISMS if m in offered), None)


def xoauth2_response(user: str, token: str) -> bytes:
    """``user=<u>^Aauth=Bearer <token>^A^A``, base64 (Google's and Microsoft's XOAUTH2)."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


def _saslname(user: str) -> str:
    # RFC 5801 section 4: "," and "=" are escaped in the authzid.
    return user.replace("=", "=3D").replace(",", "=2C")


def oauthbearer_response(user: str, token: str, host: str, port: int) -> bytes:
    """The RFC 7628 initial client response: GS2 header, host, port and the bearer token."""
    message = f"n,a={_saslname(user)},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(message.encode())


def error_answer(mechanism: str) -> bytes:
    """What the client sends back to a ``334`` error challenge so the server can finish with 535."""
    return base64.b64encode(b"\x01") if mechanism == "OAUTHBEARER" else b""


def describe_challenge(text: str) -> str:
    """A short, token-free account of a ``334`` error challenge for the audit."""
    try:
        data = json.loads(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        return "an undecodable error challenge"
    if not isinstance(data, dict):
        return "an undecodable error challenge"
    parts = [
        f"{key} {str(data[key])[:80]}" for key in ("status", "schemes", "scope") if key in data
    ]
    return "error challenge: " + (", ".join(parts) or "empty")
