"""The one interface a session hands its message to: relay (cut-through) or queue (store-and-forward).

`gateway.outbound.relay.RelayTransaction` and `gateway.queue.enqueue.QueueTransaction` both
implement `Delivery` (structurally: neither imports this module, and the session imports neither).
The host (`gateway.inbound.host.SessionHost`) makes one per transaction, at its first accepted
recipient. Pure: no reactor imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from gateway.smtp.address import Address
    from gateway.smtp.data import MessageFacts
    from gateway.smtp.replies import Reply


@dataclass(frozen=True)
class Origin:
    """Where a message came from, as the spool records it."""

    session_id: str
    client_ip: str
    helo: str | None
    app: str | None = None  # the app that authenticated (a DSN's sender must be vouched for)
    message_id: str | None = None  # the Message-ID the gateway added (none, or stripped)
    # the app's TLS (`gateway.inbound.starttls.audit_fields`): None on a plain session
    client_tls_version: str | None = None
    client_tls_cipher: str | None = None
    client_cert_sha256: str | None = None


class Delivery(Protocol):
    """One mail transaction on its way out. Every method answers the app's command in order."""

    mode: str  # "relay" or "queue": the rule's `delivery`
    route: tuple[str, ...]  # the first recipient's upstreams, in failover order

    def rcpt(
        self, recipient: Address, route: tuple[str, ...], rule: str | None
    ) -> Reply | Deferred[Reply]:
        """A recipient that passed policy: the reply for the app (relay: the upstream's verdict)."""

    def data(self) -> Reply | Deferred[Reply]:
        """DATA: 354 to go on, or the refusal."""

    def throttle(self, producer: Any) -> None:
        """Let the far side's buffer pause the app's transport while the body streams."""

    def unthrottle(self) -> None:
        """Undo `throttle` (before any close) and resume the app's side."""

    def write(self, content: bytes) -> None:
        """Body bytes (unstuffed, CRLF lines) as the DATA reader passes them on."""

    def finish(self, facts: MessageFacts, origin: Origin) -> Reply | Deferred[Reply]:
        """The final dot: a 2xx only once the upstream accepted or the message is durable."""

    def settled(self) -> None:
        """The session recorded a 2xx outcome; the delivery may go on (queue: the runner starts)."""

    def abort(self, reason: str) -> None:
        """Give up: nothing is delivered or kept (the final dot is never sent)."""

    @property
    def handed_over(self) -> bool:
        """True once the whole message left the session (the dot went out, or the commit runs)."""

    def audit_fields(self) -> dict[str, Any]:
        """What ``message.result`` / ``message.queued`` record of this delivery."""


def then(result: Any, callback: Any, *args: Any) -> Any:
    """Apply `callback` to an answer now, or when its Deferred fires (a delivery, or the host's
    rate check, may answer either way)."""
    if isinstance(result, Deferred):
        return result.addCallback(callback, *args)
    return callback(result, *args)
