"""AUTH from apps to the listener: the SASL PLAIN and LOGIN exchanges (RFC 4954, 4616). Pure.

`SaslExchange` is fed the AUTH argument and then each response line; it answers
with a 334 challenge, an error `Reply`, or the `Credentials` to verify.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from gateway.config.secrets import Secret
from gateway.smtp import replies
from gateway.smtp.replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_UNDECODABLE = Reply(501, "5.5.2", "Cannot decode the response")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type; use PLAIN or LOGIN")
AUTH_TWICE = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_NOT_OFFERED = replies.NOT_IMPLEMENTED.with_text(
    "AUTH is not offered: no [apps] are configured"
)
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated app")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header not allowed for the authenticated app")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: Secret


def _challenge(text: str) -> Reply:
    return Reply(334, "", base64.b64encode(text.encode()).decode("ascii"))


def _decode(line: str) -> bytes | None:
    try:
        return base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class SaslExchange:
    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self._username: str | None = None

    @classmethod
    def begin(cls, argument: str) -> tuple[SaslExchange | None, Reply | Credentials]:
        """Start from ``AUTH <argument>``: the exchange (None when finished) and its first answer."""
        mechanism, _, initial = argument.strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            return None, AUTH_UNKNOWN_MECHANISM
        exchange = cls(mechanism)
        if mechanism == "PLAIN":
            if not initial:
                return exchange, Reply(334, "", "")
            return exchange._finish(exchange.respond(initial))
        if initial:  # RFC 4954 allows an initial response for LOGIN too: the username
            return exchange._finish(exchange.respond(initial))
        return exchange, _challenge("Username:")

    def _finish(
        self, answer: Reply | Credentials
    ) -> tuple[SaslExchange | None, Reply | Credentials]:
        done = isinstance(answer, Credentials) or answer.code != 334
        return (None if done else self), answer

    def respond(self, line: str) -> Reply | Credentials:
        if line.strip() == "*":
            return AUTH_CANCELLED
        data = _decode(line)
        if data is None:
            return AUTH_UNDECODABLE
        if self.mechanism == "PLAIN":
            parts = data.split(b"\0")
            if len(parts) != 3:
                return AUTH_UNDECODABLE
            authzid, authcid, password = parts
            if authzid and authzid != authcid:
                return AUTH_FAILED
            return _credentials(authcid, password)
        if self._username is None:
            self._username = data.decode("utf-8", "replace")
            return _challenge("Password:")
        return _credentials(self._username.encode("utf-8"), data)


def _credentials(user: bytes, password: bytes) -> Reply | Credentials:
    try:
        return Credentials(user.decode("utf-8"), Secret(password.decode("utf-8")))
    except UnicodeDecodeError:
        return AUTH_UNDECODABLE
