"""AUTH from apps to the listener: the SASL PLAIN and LOGIN exchanges (RFC 4954, 4616). Pure.

`SaslExchange` is fed the AUTH argument and then each response line; it answers
with a 334 challenge, an error `Reply`, or the `Credentials` to verify.
`AppLogin` is one session's side: the exchange in progress, the throttle
(`gateway.policy.auth_throttle`, shared by all sessions through the host), the password
check (handed to the host: its own thread pool), and the ``session.auth*`` events.
An unknown app name is checked against the host's dummy hash of the same scheme and
parameters as the real apps' (`gateway.policy.passwords.DummyHashes`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.audit.events import Event
from gateway.config.secrets import Secret
from gateway.policy.rules import sender_owned
from gateway.smtp.replies import (
    AUTH_CANCELLED,
    AUTH_EMPTY_CHALLENGE,
    AUTH_FAILED,
    AUTH_OK,
    AUTH_THROTTLED,
    AUTH_UNDECODABLE,
    AUTH_UNKNOWN_MECHANISM,
    Reply,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gateway.config.model import App
    from gateway.inbound.host import SessionHost, SessionLog
    from gateway.policy.auth_throttle import AuthThrottle

MECHANISMS = ("PLAIN", "LOGIN")


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
                return exchange, AUTH_EMPTY_CHALLENGE
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


class AppLogin:
    """One session's AUTH: the SASL exchange in progress, the password check, its audit events.

    The `host` checks a password against a stored hash off the reactor thread
    (``verify_password``), keeps the throttle and the dummy hashes, and pauses before a
    throttled answer. `app` is the app's name once it authenticated.
    """

    def __init__(self, apps: Mapping[str, App], host: SessionHost, log: SessionLog) -> None:
        self.apps = apps
        self.host = host
        self.log = log
        self.app: str | None = None
        self._exchange: SaslExchange | None = None

    @property
    def authenticated(self) -> App | None:
        """The settings of the app that authenticated, if any."""
        return self.apps.get(self.app or "")

    @property
    def exchanging(self) -> bool:
        """Whether the next line from the app is a response in the exchange (not a command)."""
        return self._exchange is not None

    def owns(self, sender: str) -> bool:
        """Whether the app that authenticated (if any) may use `sender` (``apps.<name>.senders``)."""
        return self.app is None or sender_owned(self.apps[self.app].senders, sender)

    def begin(self, argument: str, client: str) -> Reply | Deferred[Reply]:
        """``AUTH <argument>`` from `client` (the dialogue checked it may authenticate now)."""
        exchange, answer = SaslExchange.begin(argument)
        if exchange is not None and isinstance(answer, Reply):
            self._exchange = exchange
            return answer
        return self._answer(None, answer, client)

    def respond(self, line: bytes, client: str) -> Reply | Deferred[Reply]:
        """The app's response line inside the exchange."""
        exchange, self._exchange = self._exchange, None
        assert exchange is not None
        return self._answer(exchange, exchange.respond(line.decode("ascii", "replace")), client)

    def _answer(
        self, exchange: SaslExchange | None, answer: Reply | Credentials, client: str
    ) -> Reply | Deferred[Reply]:
        if isinstance(answer, Reply):
            if answer.code == 334:
                self._exchange = exchange
            elif answer.code >= 500:
                self.log.info(Event.SESSION_AUTH_FAILED, client_ip=client, reason=answer.text)
            return answer
        name = answer.username[:64]
        throttle, started = self.host.auth_throttle, self.host.monotonic()
        if throttle.refused(client, name, started):
            self.log.info(
                Event.SESSION_AUTH_FAILED, client_ip=client, username=name, reason="throttled"
            )
            return AUTH_THROTTLED
        wait = throttle.delay(client, name, started)
        app = self.apps.get(answer.username)
        if app is not None and not app.password_hash:  # identified by its certificate only
            app = None
        # An unknown name costs the same hash check as a wrong password.
        stored = app.password_hash if app is not None else self.host.dummy_hash(answer.username)
        throttle.begin(client, name)  # a guess under way counts until its check ends
        checked = self.host.verify_password(stored, answer.password)
        checked.addBoth(self._checked, throttle, client, name)
        d: Deferred[Reply] = checked.addCallback(
            self._verified, answer.username, app is not None, client
        )
        if wait > 0:  # before any answer, right or wrong: the wait tells nothing
            d.addCallback(self._after, started + wait)
        return d

    @staticmethod
    def _checked(result: Any, throttle: AuthThrottle, client: str, name: str) -> Any:
        throttle.end(client, name)
        return result

    def _after(self, reply: Reply, until: float) -> Reply | Deferred[Reply]:
        left = until - self.host.monotonic()
        if left <= 0:
            return reply
        return self.host.pause(left).addCallback(lambda _: reply)

    def _verified(self, ok: bool, username: str, known: bool, client: str) -> Reply:
        name = username[:64]
        if ok and known:
            self.app = username
            self.host.auth_throttle.succeeded(client, name)
            self.log.info(Event.SESSION_AUTHENTICATED, client_ip=client, app=username)
            return AUTH_OK
        self.host.auth_throttle.failed(client, name, self.host.monotonic())
        self.log.info(
            Event.SESSION_AUTH_FAILED,
            client_ip=client,
            username=name,
            reason="unknown app" if not known else "wrong password",
        )
        return AUTH_FAILED

    def follow(self, apps: Mapping[str, App]) -> str | None:
        """Take a reloaded config's apps; the name of the app that must authenticate again.

        An app that was removed, or whose settings changed (password, senders, From check),
        is no longer authenticated: the next transaction needs a new AUTH.
        """
        dropped = self.app if self.loses_app(apps) else None
        self.apps = apps
        if dropped is not None:
            self.app = None
        return dropped

    def loses_app(self, apps: Mapping[str, App]) -> bool:
        """Whether `apps` (a reloaded config's) removed or changed the authenticated app."""
        return self.app is not None and apps.get(self.app) != self.apps.get(self.app)
