"""In-memory stand-ins for what a session and the listener ask of their host (no sockets, no reactor).

`FakeHost` implements `gateway.inbound.host.ListenerHost` with a real audit log over a
`CapturedAudit`, a clock the test moves, real rate limits and password checks (run at
once, not in a thread), and `FakeDelivery` objects that answer from a script.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.config.model import Config, Rate
from gateway.config.secrets import Secret
from gateway.config.toml import parse
from gateway.inbound.connections import Connections
from gateway.inbound.delivery import Origin
from gateway.policy import passwords
from gateway.policy.auth_throttle import AuthThrottle
from gateway.policy.ratelimit import RateLimits
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.data import MessageFacts
from gateway.smtp.replies import Reply
from gateway.testing.audit import CapturedAudit

RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_OK = Reply(250, "2.0.0", "Message accepted")


def config(document: Mapping[str, Any] | None = None, **listener: Any) -> Config:
    """A config: loopback clients, one upstream "up", every recipient relayed by rule "all"."""
    base: dict[str, Any] = {
        "listener": {"hostname": "mailgate.test", **listener},
        "upstreams": {"up": {"host": "up.example"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up"}],
    }
    base.update(copy.deepcopy(dict(document or {})))
    return parse(base, "test.toml")


class FakeDelivery:
    """A `Delivery` that answers from a script and records what the session handed it."""

    def __init__(self, mode: str, route: tuple[str, ...], mail: MailFrom) -> None:
        self.mode, self.route, self.mail = mode, route, mail
        self.rcpt_reply: Reply | defer.Deferred[Reply] = RECIPIENT_OK
        self.finish_reply: Reply | defer.Deferred[Reply] = MESSAGE_OK
        self.recipients: list[tuple[str, str | None]] = []
        self.body = b""
        self.aborted: list[str] = []
        self.finished: tuple[MessageFacts, Origin] | None = None
        self.was_settled = False
        self.throttled_by: Any = None

    def rcpt(
        self, recipient: Address, route: tuple[str, ...], rule: str | None
    ) -> Reply | defer.Deferred[Reply]:
        self.recipients.append((recipient.text, rule))
        return self.rcpt_reply

    def data(self) -> Reply:
        return replies.START_DATA

    def throttle(self, producer: Any) -> None:
        self.throttled_by = producer

    def unthrottle(self) -> None:
        self.throttled_by = None

    def write(self, content: bytes) -> None:
        self.body += content

    def finish(self, facts: MessageFacts, origin: Origin) -> Reply | defer.Deferred[Reply]:
        self.finished = (facts, origin)
        return self.finish_reply

    def settled(self) -> None:
        self.was_settled = True

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)

    @property
    def handed_over(self) -> bool:
        return self.finished is not None and isinstance(self.finish_reply, defer.Deferred)

    def audit_fields(self) -> dict[str, Any]:
        if self.mode == "queue":
            return {"queue_id": "q1", "upstreams": list(self.route)}
        return {"upstream": self.route[0]}


class FakeMetrics:
    def __init__(self) -> None:
        self.sessions: list[bool] = []
        self.results: list[tuple[dict[str, Any], float | None]] = []
        self.tls_versions: list[str] = []

    def tls_session(self, version: str) -> None:
        self.tls_versions.append(version)

    def session_opened(self, allowed: bool) -> None:
        self.sessions.append(allowed)

    def message_result(
        self, fields: Mapping[str, Any], upstream_seconds: float | None = None
    ) -> None:
        self.results.append((dict(fields), upstream_seconds))


class FakeHost:
    """A `ListenerHost` in memory; `queue_running` says whether queue mode has a spool."""

    def __init__(self, config: Config, queue_running: bool = True) -> None:
        self.config = config
        self.captured = CapturedAudit()
        self.audit = self.captured.log()
        self.metrics = FakeMetrics()
        self.reactor = Clock()
        self.connections = Connections()
        self.queue_running = queue_running
        self.deliveries: list[FakeDelivery] = []
        self._rate_limits = RateLimits()
        self.auth_throttle = AuthThrottle()
        self.dummies = passwords.DummyHashes(a.password_hash for a in config.apps.values())
        self.pauses: list[float] = []
        self.listener_tls: Any = None  # no starttls:// or smtps:// entry in these configs

    def verify_password(self, password_hash: str, password: Secret) -> defer.Deferred[bool]:
        return defer.succeed(passwords.verify(password_hash, password.reveal()))

    def dummy_hash(self, name: str) -> str:
        return self.dummies.for_name(name)

    def pause(self, seconds: float) -> defer.Deferred[None]:
        """Recorded; fires when the test advances `reactor` by `seconds`."""
        self.pauses.append(seconds)
        d: defer.Deferred[None] = defer.Deferred()
        self.reactor.callLater(seconds, d.callback, None)
        return d

    def rate_allowed(self, rule: str, rate: Rate) -> bool:
        return self._rate_limits.allow(rule, rate, self.reactor.seconds())

    def delivery(self, mode: str, route: tuple[str, ...], mail: MailFrom) -> FakeDelivery | None:
        if mode == "queue" and not self.queue_running:
            return None
        delivery = FakeDelivery(mode, route, mail)
        self.deliveries.append(delivery)
        return delivery

    def monotonic(self) -> float:
        return self.reactor.seconds()

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.captured.named(name)
