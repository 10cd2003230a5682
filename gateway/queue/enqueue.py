"""One app transaction in queue mode: its recipients and its body, committed to the spool.

The counterpart of `gateway.outbound.relay.RelayTransaction` for rules with
``delivery = "queue"``: recipients are accepted after policy without asking
the upstream, the body is streamed to ``incoming/ID/body`` as it arrives (never
held whole in memory; plain file writes in the reactor thread), and at the end
of data the message is committed durably — fsyncs and an atomic rename — before
the app sees ``250``. While the spool drains (`gateway.queue.drain`), RCPT and DATA get
``451 4.3.2``. Below ``queue.min_free`` (`gateway.queue.space`; `low_space` says why) RCPT,
DATA and the end of data get ``452 4.3.1``, the reason in the audit's ``reason`` as for a write
error. Any write error gives ``452 4.3.1`` and removes the partial
message. The commit's fsyncs run through the `committer` the host hands in (the group commit,
`gateway.queue.commit`: sessions finishing together share a batch), or else `run_blocking` (a
thread pool), so one session's disk wait does not stall the others. No reactor imports.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from gateway.queue.envelope import CLIENT_TLS_FIELDS
from gateway.queue.spool import Envelope, RecipientState, Spool, new_id
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.data import MessageFacts
from gateway.smtp.replies import Reply

RunBlocking = Callable[..., Any]  # (function, *args) -> Deferred of its result, run off the reactor
Committer = Callable[[Callable[[], None], SpoolWriter], Any]  # -> Deferred, fired once durable


class QueueTransaction:
    """Store-and-forward delivery of one transaction (implements `gateway.inbound.delivery.Delivery`).

    `on_committed(queue_id)` is called by `settled()` once the message is durable and recorded.
    """

    mode = "queue"

    def __init__(
        self,
        spool: Spool,
        mail: MailFrom,
        route: tuple[str, ...] = (),
        *,
        run_blocking: RunBlocking | None = None,
        committer: Committer | None = None,
        on_committed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        draining: Callable[[], bool] = lambda: False,
        backlogged: Callable[[tuple[str, ...], str], bool] = lambda route, sender: False,
        low_space: Callable[[int], str | None] = lambda size: None,
    ) -> None:
        self.spool = spool
        self.low_space = low_space  # (SIZE= or 0): why the spool is below queue.min_free, or None
        self.draining = draining  # `mailgate queue drain`: refuse with 451 4.3.2
        self.backlogged = backlogged  # (route, sender): the paced backlog exceeds max_age
        self.mail = mail
        self.route = route
        self.run_blocking = run_blocking
        self.committer = committer
        self.on_committed = on_committed
        self.clock = clock
        self.handed_over = False  # the commit is running in a thread
        self.recipients: list[RecipientState] = []
        self.writer: SpoolWriter | None = None
        self.queue_id: str | None = None
        self.error: str | None = None  # why the message could not be stored (for the audit)
        self.refused_for: str | None = None  # why the last refusal below queue.min_free came

    @property
    def upstreams(self) -> list[str]:
        return sorted({r.upstream for r in self.recipients})

    def rcpt(self, recipient: Address, route: tuple[str, ...], rule: str | None) -> Reply:
        """Accepted after policy (the upstream is asked only at delivery); 451 4.3.2 while draining;
        452 4.3.1 when the sender's paced backlog on the route is longer than ``max_age``, or the
        spool is below ``queue.min_free`` (counting the ``SIZE=`` MAIL announced)."""
        if self.draining():
            return replies.QUEUE_DRAINING
        if self._below_floor(self.mail.size or 0):
            return replies.QUEUE_BELOW_MIN_FREE
        if self.backlogged(route, self.mail.sender.text):
            return replies.PACED_BACKLOG_FULL
        self.recipients.append(RecipientState(recipient.text, route[0], rule, route=list(route)))
        return replies.QUEUE_RECIPIENT_OK

    def data(self) -> Reply:
        """Open incoming/ID/body; 354, 451 4.3.2 while draining, 452 4.3.1 below ``queue.min_free``
        or if the spool cannot be written."""
        if self.draining():
            return replies.QUEUE_DRAINING
        if self._below_floor(self.mail.size or 0):
            return replies.QUEUE_BELOW_MIN_FREE
        queue_id = new_id(self.clock())
        try:
            self.writer = SpoolWriter(self.spool, queue_id)
        except OSError as exc:
            return self._failed(exc)
        self.queue_id = queue_id
        return replies.START_DATA

    def write(self, content: bytes) -> None:
        if self.writer is not None:
            self.writer.write(content)

    def envelope(
        self,
        facts: MessageFacts,
        *,
        session_id: str,
        client_ip: str,
        helo: str | None,
        app: str | None = None,
        message_id: str | None = None,
        client_tls: dict[str, Any] | None = None,
    ) -> Envelope:
        """The envelope to commit with the body received so far (`message_id`: the one the
        gateway added, when the message had none or a rule stripped it; `client_tls`: the
        envelope's ``client_tls_version``, ``client_tls_cipher``, ``client_cert_sha256``)."""
        assert self.writer is not None
        return Envelope(
            id=self.writer.id,
            sender=self.mail.sender.text,
            recipients=self.recipients,
            received=self.clock(),
            mail_body=self.mail.body,
            size=self.writer.size,
            sha256=facts.sha256,
            message_id=message_id or facts.message_id,
            session_id=session_id,
            client_ip=client_ip,
            helo=helo,
            app=app,
            **(client_tls or {}),
        )

    def commit(self, envelope: Envelope) -> None:
        """Make the message durable (fsyncs; blocking: the session runs it in a thread)."""
        assert self.writer is not None
        self.writer.commit(envelope)

    def committed(self, error: OSError | None) -> Reply:
        """After `commit`: 250 with the queue id, or 452 4.3.1 (and nothing kept) if it failed."""
        writer, self.writer = self.writer, None
        assert writer is not None
        self.handed_over = False
        if error is not None:
            writer.discard()
            return self._failed(error)
        self.refused_for = None  # an earlier recipient's refusal is no reason of a queued message
        return replies.QUEUED.with_text(f"Queued as {writer.id}")

    def _below_floor(self, size: int) -> bool:
        """The spool is below ``queue.min_free`` (with `size` more bytes): remember why."""
        reason = self.low_space(size)
        if reason is not None:
            self.refused_for = reason
        return reason is not None

    def _failed(self, exc: OSError) -> Reply:
        self.error = f"spool write failed: {exc.strerror or type(exc).__name__}"
        return replies.QUEUE_WRITE_FAILED

    def throttle(self, producer: Any) -> None:
        """The spool is written in the reactor thread: nothing to throttle."""

    def unthrottle(self) -> None:
        """Nothing was throttled."""

    def finish(self, facts: MessageFacts, origin: Any) -> Reply | Any:
        """Commit in a thread; 250 only once it is durable (then `on_committed`), else 452 4.3.1
        (below ``queue.min_free`` now: the body received is removed, nothing is committed)."""
        if self.writer is None:
            return self.committed(OSError("spool not writable"))
        if self._below_floor(0):
            self.abort("below queue.min_free")
            return replies.QUEUE_BELOW_MIN_FREE
        envelope = self.envelope(
            facts,
            session_id=origin.session_id,
            client_ip=origin.client_ip,
            helo=origin.helo,
            app=getattr(origin, "app", None),
            message_id=getattr(origin, "message_id", None),
            client_tls={name: getattr(origin, name, None) for name in CLIENT_TLS_FIELDS},
        )
        self.handed_over = True
        if self.committer is not None:
            d = self.committer(functools.partial(self.commit, envelope), self.writer)
        else:
            assert self.run_blocking is not None
            d = self.run_blocking(self.commit, envelope)

        def failed(failure: Any) -> Reply:
            failure.trap(OSError)
            return self.committed(failure.value)

        d.addCallbacks(lambda _: self.committed(None), failed)
        return d

    def settled(self) -> None:
        """The session recorded the outcome: a committed message goes to the runner now."""
        if self.queue_id is not None and self.error is None and self.on_committed is not None:
            self.on_committed(self.queue_id)

    def audit_fields(self) -> dict[str, Any]:
        """The queue id and first upstreams, for ``message.queued``; why a commit failed."""
        fields: dict[str, Any] = {"upstreams": self.upstreams}
        if self.queue_id is not None:
            fields["queue_id"] = self.queue_id
        reason = self.error or self.refused_for
        if reason is not None:
            fields["reason"] = reason
        return fields

    def abort(self, reason: str = "") -> None:
        """The message will not be committed: remove what was received."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.discard()
