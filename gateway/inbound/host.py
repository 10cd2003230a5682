"""What an app session and the listener may ask of their surroundings.

A `gateway.inbound.session.Session` talks to a `SessionHost`; the listener protocol to a
`ListenerHost` (a session host that also keeps the connection accounting and the timers).
The running gateway (`gateway.daemon.gateway.Gateway`) implements both, structurally: nothing
in `gateway.inbound` knows it, and tests hand a session a small in-memory host instead.

Types only: no reactor imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gateway.audit.events import Event
    from gateway.config.model import Config, Rate
    from gateway.config.secrets import Secret
    from gateway.inbound.connections import Connections
    from gateway.inbound.delivery import Delivery
    from gateway.inbound.starttls import ClientTLS
    from gateway.policy.auth_throttle import AuthThrottle
    from gateway.smtp.commands import MailFrom


class SessionLog(Protocol):
    """The audit logger bound to one session (its ``session_id`` on every event)."""

    def info(self, event: Event, **fields: Any) -> Any: ...


class AuditTrail(Protocol):
    """The audit log, as the listener and its sessions write to it."""

    def bind(self, **context: Any) -> SessionLog:
        """A logger with `context` on every event."""

    def event(self, name: Event, **fields: Any) -> None:
        """One event outside any session (``connection.refused``, ``gateway.error``)."""


class SessionMetrics(Protocol):
    """What a session counts for ``/metrics``."""

    def session_opened(self, allowed: bool) -> None: ...

    def message_result(
        self, fields: Mapping[str, Any], upstream_seconds: float | None = None
    ) -> None:
        """One ``message.result`` (or ``message.queued``) and the upstream's time for it."""

    def tls_session(self, version: str) -> None:
        """An app's TLS handshake completed with `version` ("TLSv1.3")."""


class SessionHost(Protocol):
    """What one app session may ask for."""

    @property
    def config(self) -> Config:
        """The current config (a session takes it again at each MAIL: a reload reaches it there)."""

    @property
    def audit(self) -> AuditTrail: ...

    @property
    def metrics(self) -> SessionMetrics: ...

    def verify_password(self, password_hash: str, password: Secret) -> Deferred[bool]:
        """Check an app password off the reactor thread (the hashes are slow by design), in a
        bounded thread pool of its own (never the one spool commits use)."""

    @property
    def auth_throttle(self) -> AuthThrottle:
        """Failed AUTH counts, shared by every session (time is `monotonic`)."""

    def dummy_hash(self, name: str) -> str:
        """The hash to check an unknown app name against: same scheme and cost as the real ones."""

    def pause(self, seconds: float) -> Deferred[None]:
        """Fires after `seconds` (a throttled AUTH waits before its answer)."""

    def rate_allowed(self, rule: str, rate: Rate) -> bool | None | Deferred[bool | None]:
        """Take one message from `rule`'s bucket now: False when its rate is exceeded. With
        ``[cluster]`` the answer may come later (Redis is asked), and None means undecided:
        the shared limit is unavailable and ``cluster.on_unavailable = "defer"``."""

    def delivery(self, mode: str, route: tuple[str, ...], mail: MailFrom) -> Delivery | None:
        """The delivery of one transaction (relay over `route`, or queue); None when the
        rule queues but no spool is running."""

    def monotonic(self) -> float:
        """Seconds on a clock that only goes forward: session durations, the upstream's latency."""


class Timers(Protocol):
    """The part of the reactor the listener uses (``IReactorTime``)."""

    def seconds(self) -> float: ...

    def callLater(  # noqa: N802 (Twisted's name)
        self, delay: float, callable: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any: ...


class ListenerTLS(Protocol):
    """The listener's TLS: its certificate, key and client CA (``[listener] tls_*``).

    `connection` is the OpenSSL connection of one app's TLS session (the transport's
    ``getHandle()``); the listener never looks inside it.
    """

    def creator(self) -> Any:
        """The ``IOpenSSLServerConnectionCreator`` for new TLS sessions (a reload changes what
        it makes: sessions open already keep theirs)."""

    def facts(self, connection: Any) -> ClientTLS:
        """Version, cipher and client certificate of a completed handshake."""

    def failure(self, connection: Any, error: BaseException | None) -> str:
        """Why a handshake did not complete, in words (certificate verification, version, ...)."""


class ListenerHost(SessionHost, Protocol):
    """What the listener protocol may ask for: a session host, the accounting and the timers."""

    @property
    def connections(self) -> Connections:
        """The app connections open now (the drain on shutdown waits for them)."""

    @property
    def reactor(self) -> Timers: ...

    @property
    def listener_tls(self) -> ListenerTLS | None:
        """The TLS of ``starttls://`` and ``smtps://`` entries (None when no entry has TLS)."""
