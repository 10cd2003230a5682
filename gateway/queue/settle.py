"""After a delivery round: backoff or expiry, the bounce, the durable record, the next folder.

`Settler.settle` decides what a round leaves: recipients still pending get the next attempt
time from the backoff (or fail as expired at ``max_age``) — but those waiting for a held
upstream (``parked``: left out of the round), which get neither; recipients that failed get a DSN
to the sender, queued as a message of its own; the envelope is saved, and the message moves
to ``deferred/`` (``message.deferred``), ``dead/`` (``message.dead``) or away, with its one
``message.result``. An envelope that cannot be written keeps what this process knows in
memory (`restore` applies it to the next round) so a delivered recipient is not sent again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from datetime import UTC, datetime
from typing import Any

from gateway.audit.events import Event, Outcome
from gateway.audit.log import AuditLog
from gateway.config.model import Config
from gateway.queue import bounces as dsn
from gateway.queue import writer
from gateway.queue.backoff import Backoff
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DELIVERED,
    DONE,
    FAILED,
    PENDING,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
    read_headers,
)


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Settler:
    def __init__(
        self,
        spool: Spool,
        config: Config,
        audit: AuditLog,
        clock: Callable[[], float],
        on_bounce: Callable[[str], None],
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.spool = spool
        self.config = config
        self.audit = audit
        self.clock = clock
        self.on_bounce = on_bounce  # a DSN was queued: deliver it
        self.on_result = on_result  # metrics: called with each message.result's fields
        queue = config.queue
        self.backoff = Backoff(queue.min_backoff, queue.max_backoff, queue.max_age)
        self.unsaved: dict[str, dict[str, str]] = {}  # queue id -> final statuses not on disk

    def restore(self, envelope: Envelope) -> None:
        """Apply the outcomes this process knows but could not write."""
        for recipient in envelope.recipients:
            status = self.unsaved.get(envelope.id, {}).get(recipient.address)
            if status is not None:
                recipient.status, recipient.in_flight = status, False

    def settle(
        self,
        envelope: Envelope,
        opened: bool = True,
        upstream: dict[str, Any] | None = None,
        paced: float | None = None,
        parked: Container[tuple[str, ...]] = (),
    ) -> float | None:
        """Record the round; the time the message is due again when it waits in ``deferred/``.

        `opened`: a session was in hand (the round must be durable); `upstream`: the round's
        upstream fields, for ``message.result``; `paced`: the round was kept back by a provider
        budget or throttling until then (the next attempt, never an expiry: pacing is not
        failing, and the wait is added to the envelope's ``paced_s``, which moves its age limit
        as far); `parked`: the routes whose next upstream is held (their recipients were left
        out: no backoff, no expiry; when only they are left pending, the message waits in
        ``deferred/`` due never — `math.inf` — until the runner finds the upstream released).
        Raises `MessageGone` if the operator moved it.
        """
        now = self.clock()
        live = [r for r in envelope.pending if r.hops not in parked]
        if live and paced is not None:
            envelope.paced_s += max(0.0, paced - now)  # waiting is not ageing (queue.max_age)
            envelope.next_attempt = paced
        elif live:
            attempts = max(r.attempts for r in live)
            due = self.backoff.next_attempt(envelope.age_base, attempts, now)
            if due is None:
                for recipient in live:
                    recipient.status = FAILED
                    recipient.expired = True
            else:
                envelope.next_attempt = due
        waits_held = bool(envelope.pending) and all(r.hops in parked for r in envelope.pending)
        bounce = self._bounce(envelope, now)
        # Durable when this round changed what must never be redone (a delivery, a failure, a DSN);
        # a round of transient failures only needs the new backoff, which a crash may shorten.
        changed = opened or any(r.status != PENDING for r in envelope.recipients)
        try:
            self.spool.save(ACTIVE, envelope, durable=changed)
        except OSError as exc:
            return self._save_failed(envelope, exc, now)
        self.unsaved.pop(envelope.id, None)
        if envelope.pending:
            self.spool.move(envelope.id, ACTIVE, DEFERRED, durable=False)
            self.audit.event(
                Event.MESSAGE_DEFERRED,
                queue_id=envelope.id,
                message_id=envelope.message_id,
                recipients=[r.address for r in envelope.pending],
                attempts=envelope.attempts,
                next_attempt=None if waits_held else iso(envelope.next_attempt),
                **({"paced": True} if paced is not None and not waits_held else {}),
                **({"held_upstream": True} if waits_held else {}),
            )
            return math.inf if waits_held else envelope.next_attempt
        self.result(envelope, upstream=upstream)
        if any(r.status == FAILED for r in envelope.recipients):
            self.spool.move(envelope.id, ACTIVE, DEAD, durable=False)
            self.audit.event(
                Event.MESSAGE_DEAD,
                queue_id=envelope.id,
                message_id=envelope.message_id,
                recipients=[r.address for r in envelope.recipients if r.status == FAILED],
                reason="kept in the dead-letter area (mailgate queue dead)",
                **({"bounce": bounce} if bounce else {}),
            )
        else:
            self.spool.move(envelope.id, ACTIVE, DONE, durable=False)  # removed in batches
        return None

    def _save_failed(self, envelope: Envelope, exc: OSError, now: float) -> float | None:
        """The round's outcome could not be written (disk full, I/O error).

        On disk the recipients are still pending and in flight, so the next round sends them
        again: flag that as a possible duplicate, and wait a backoff instead of the next scan.
        """
        sent = {r.address for r in envelope.recipients if r.status == DELIVERED}
        # Never sent again by this process; after a restart the disk's state wins: flagged resend.
        self.unsaved[envelope.id] = {
            r.address: r.status for r in envelope.recipients if r.status != PENDING
        }
        due = now + self.config.queue.min_backoff
        self.audit.event(
            Event.QUEUE_WRITE_FAILED,
            queue_id=envelope.id,
            error=exc.strerror or type(exc).__name__,
            delivered_not_recorded=sorted(sent),
            next_attempt=iso(due),
        )
        try:
            self.spool.move(envelope.id, ACTIVE, DEFERRED, durable=False)
        except (OSError, MessageGone):
            return None  # it stays in active/ and is tried at the next scan, still flagged
        return due

    def _bounce(self, envelope: Envelope, now: float) -> str | None:
        """Queue the DSN for this round's failures if the sender is vouched for; else why not."""
        failed = [r for r in envelope.recipients if r.status == FAILED and not r.bounced]
        if not failed or not self.config.queue.bounce or not dsn.wants_bounce(envelope):
            return None
        allowed_by = dsn.vouched_by(envelope, failed, self.config)
        if allowed_by is None:
            return dsn.NOT_VOUCHED
        dsn_id = new_id(now)
        try:
            headers = dsn.headers_only(read_headers(self.spool.body_path(ACTIVE, envelope.id)))
            body = dsn.build(
                envelope,
                failed,
                headers,
                hostname=self.config.listener.hostname,
                dsn_id=dsn_id,
                now=now,
            )
            bounce = Envelope(
                id=dsn_id,
                sender="",
                received=now,
                size=len(body),
                recipients=[
                    RecipientState(
                        envelope.sender, failed[0].upstream, None, route=list(failed[0].hops)
                    )
                ],
                message_id=f"<{dsn_id}@{self.config.listener.hostname}>",
                bounce_of=envelope.id,
            )
            writer.store(self.spool, bounce, body)
        except OSError as exc:
            self.audit.event(
                Event.GATEWAY_ERROR,
                queue_id=envelope.id,
                type="OSError",
                error=f"could not queue the DSN: {exc.strerror}; will try again next round",
            )
            return None
        for recipient in failed:
            recipient.bounced = True
        self.audit.event(
            Event.MESSAGE_BOUNCED,
            queue_id=envelope.id,
            dsn_queue_id=dsn_id,
            to=envelope.sender,
            recipients=[r.address for r in failed],
            upstream=failed[0].upstream,
            allowed_by=allowed_by,
        )
        self.on_bounce(dsn_id)
        return None

    def result(
        self,
        envelope: Envelope,
        outcome: Outcome | None = None,
        upstream: dict[str, Any] | None = None,
    ) -> None:
        """The message's one ``message.result``; `upstream`: the last round's upstream fields."""
        statuses = {r.status for r in envelope.recipients}
        if outcome is None:
            outcome = (
                Outcome.DELIVERED
                if statuses == {DELIVERED}
                else Outcome.FAILED
                if statuses == {FAILED}
                else Outcome.PARTIAL
            )
        fields: dict[str, Any] = {
            "queue_id": envelope.id,
            "delivery": "queue",
            "sender": envelope.sender,
            "message_id": envelope.message_id,
            "size": envelope.size,
            "sha256": envelope.sha256,
            "received": iso(envelope.received),
            "attempts": envelope.attempts,
            "recipients": [
                {
                    "address": r.address,
                    "result": r.status,
                    "reply": r.last_reply,
                    "upstream": r.upstream,
                    "rule": r.rule,
                    "attempts": r.attempts,
                    **({"expired": True} if r.expired else {}),
                }
                for r in envelope.recipients
            ],
            "outcome": outcome,
            **(upstream or {}),
            "client_tls_version": envelope.client_tls_version,  # the app's, as at enqueue
            "client_tls_cipher": envelope.client_tls_cipher,
        }
        if envelope.client_cert_sha256:
            fields["client_cert_sha256"] = envelope.client_cert_sha256
        if envelope.session_id:
            fields["origin_session_id"] = envelope.session_id
        if envelope.bounce_of:
            fields["bounce_of"] = envelope.bounce_of
        self.audit.event(Event.MESSAGE_RESULT, **fields)
        if self.on_result is not None:
            first = envelope.recipients[0].upstream if envelope.recipients else None
            rules = sorted({r.rule for r in envelope.recipients if r.rule})
            self.on_result({**fields, "rules": rules, "upstream": fields.get("upstream") or first})
