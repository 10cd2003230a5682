"""One mail transaction's record: its recipients' results, its outcome and its audit fields.

A `Transaction` starts at MAIL and collects a `RecipientResult` per RCPT (accepted by the
delivery, or refused by the gateway with the rule and limit that decided). It ends in exactly
one ``message.result`` (`Transaction.result`), or, once durable in the spool, one
``message.queued`` (`Transaction.queued`; the runner writes the result later).

Its cost per RCPT is constant and its record is bounded, however many RCPT commands come:
every accepted recipient is listed (at most ``listener.max_recipients``), and of the others
the first `UNACCEPTED_LISTED`; ``recipients_omitted`` counts the rest.

Pure: no reactor imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.events import ACCEPTED, Outcome
from gateway.config.headers import HeaderEdits
from gateway.inbound.delivery import Delivery
from gateway.policy.headers import HeaderRewriter
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.data import MessageFacts
from gateway.smtp.replies import Reply

UNACCEPTED_LISTED = 100  # recipients not accepted that the audit lists by name


def outcome_of(reply: Reply) -> Outcome:
    """What a final reply means for a message or a recipient: relayed, deferred or rejected."""
    return (
        Outcome.RELAYED
        if reply.is_positive
        else Outcome.DEFERRED
        if reply.is_transient
        else Outcome.REJECTED
    )


@dataclass
class RecipientResult:
    address: str
    result: str  # ACCEPTED while the transaction is open, then an Outcome
    reply: str
    rule: str | None = None
    limit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Transaction:
    mail: MailFrom
    recipients: list[RecipientResult] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    delivery: Delivery | None = None  # relay or queue, from the first accepted recipient
    facts: MessageFacts = field(default_factory=MessageFacts)
    in_data: bool = False
    rated_rules: set[str] = field(default_factory=set)
    refusal: Reply | None = None  # set during DATA when the message must be refused (header checks)
    refusal_limit: str | None = None  # the setting whose check refused it
    refusal_reason: str | None = None  # what the check found
    dot_sent: float | None = None  # when the end of data went upstream (for the latency metric)
    headers: HeaderRewriter | None = None  # the rule's header edits and the gateway's trace
    rcpt_commands: int = (
        0  # RCPT commands so far, whatever their reply (listener.max_rcpt_commands)
    )
    accepted_count: int = 0  # recipients accepted (listener.max_recipients)
    unaccepted_listed: int = 0  # recipients not accepted, listed in `recipients`
    recipients_omitted: int = 0  # recipients not accepted and not listed (past UNACCEPTED_LISTED)
    any_deferred: bool = False  # a recipient was deferred (listed or not)

    @property
    def accepted(self) -> list[RecipientResult]:
        return [r for r in self.recipients if r.result == ACCEPTED]

    def _record(self, recipient: RecipientResult) -> None:
        """List `recipient`, keeping the counts; past the bound only count one not accepted."""
        if recipient.result == ACCEPTED:
            self.accepted_count += 1
        else:
            self.any_deferred = self.any_deferred or recipient.result == Outcome.DEFERRED
            if self.unaccepted_listed >= UNACCEPTED_LISTED:
                self.recipients_omitted += 1
                return
            self.unaccepted_listed += 1
        self.recipients.append(recipient)

    # --- recipients ----------------------------------------------------------------------

    def answered(self, reply: Reply, recipient: Address, rule: str | None) -> Reply:
        """Record the delivery's `reply` to a recipient that passed policy; returns it."""
        if rule and rule not in self.rules:
            self.rules.append(rule)
        result = ACCEPTED if reply.is_positive else outcome_of(reply)
        self._record(RecipientResult(recipient.text, result, str(reply), rule=rule))
        return reply

    def refused(
        self,
        recipient: Address,
        reply: Reply,
        *,
        rule: str | None = None,
        limit: str | None = None,
    ) -> Reply:
        """Record a recipient the gateway refused (by `rule`, or at `limit`); returns the reply."""
        self._record(
            RecipientResult(recipient.text, outcome_of(reply), str(reply), rule=rule, limit=limit)
        )
        if rule and rule not in self.rules:
            self.rules.append(rule)
        return reply

    def mismatch(
        self, mode: str, route: tuple[str, ...], edits: HeaderEdits | None
    ) -> tuple[Reply, str] | None:
        """Why a recipient cannot share this transaction's delivery (the reply and the limit).

        One transaction has one delivery mode, in relay mode one upstream route, and one
        set of header edits; None when the recipient fits (or no delivery is chosen yet).
        """
        if self.delivery is None:
            return None
        if self.delivery.mode != mode:
            return replies.OTHER_DELIVERY, "one delivery mode per transaction"
        if mode == "relay" and self.delivery.route != route:
            return replies.OTHER_ROUTE, "one upstream per transaction in relay mode"
        if ((self.headers.edits if self.headers else None) or None) != (edits or None):
            return replies.OTHER_HEADER_EDITS, "one set of header edits per transaction"
        return None

    # --- the end -------------------------------------------------------------------------

    def abandoned_outcome(self) -> Outcome:
        """The outcome when the app goes away (or starts over) before a final reply."""
        if self.accepted_count or self.in_data:
            return Outcome.FAILED  # the app gave up on a message the upstream would have taken
        if self.any_deferred:
            return Outcome.DEFERRED
        return Outcome.REJECTED

    def result(
        self,
        who: Mapping[str, Any],
        reply: Reply | None,
        outcome: Outcome | None = None,
        *,
        reason: str | None = None,
        limit: str | None = None,
    ) -> dict[str, Any]:
        """The fields of this transaction's one ``message.result``; settles its recipients.

        `who` is the session's part (``client_ip``, ``helo``, ``app``); `reply` the final
        reply to the app, None when there was none (abandoned: then `outcome` is given).
        """
        if outcome is None:
            assert reply is not None
            outcome = outcome_of(reply)
        for recipient in self.recipients:
            if recipient.result == ACCEPTED:
                if reply is not None:
                    recipient.result = outcome_of(reply)
                    recipient.reply = str(reply)
                else:
                    recipient.result = Outcome.FAILED
        fields: dict[str, Any] = {
            **who,
            "sender": self.mail.sender.text,
            "recipients": [r.as_dict() for r in self.recipients],
            **self._omitted(),
            "rules": self.rules,
            "outcome": outcome,
        }
        if reply is not None:
            fields["reply"] = str(reply)
        if self.delivery is not None:
            delivered = self.delivery.audit_fields()
            if self.delivery.mode == "queue":  # no upstream yet: only why the commit failed
                delivered = {k: v for k, v in delivered.items() if k == "reason"}
            fields.update(delivered)
        if self.in_data:
            fields.update(
                size=self.facts.size, message_id=self.message_id, sha256=self.facts.sha256
            )
            if self.headers is not None and self.headers.edits.rewrite_from:
                fields["original_from"] = self.headers.original_from
            fields.update(self._added())
        reason = reason or (self.refusal_reason if reply is self.refusal else None)
        if reason and "reason" not in fields:  # the spool's own (min_free, a write error) wins
            fields["reason"] = reason
        if limit:
            fields["limit"] = limit
        return fields

    @property
    def message_id(self) -> str | None:
        """The Message-ID the message left with: the one the gateway added (the app's message had
        none, or a rule stripped it), else the app's."""
        added = self.headers.message_id if self.headers is not None else None
        return added or self.facts.message_id

    def _added(self) -> dict[str, list[str]]:
        """``headers_added``: the fields the gateway wrote into the message (when any)."""
        return {"headers_added": self.headers.added} if self.headers and self.headers.added else {}

    def _omitted(self) -> dict[str, int]:
        return {"recipients_omitted": self.recipients_omitted} if self.recipients_omitted else {}

    def queued(self, client_ip: str, helo: str | None, reply: Reply) -> dict[str, Any]:
        """The fields of ``message.queued``: the message is durable in the spool."""
        assert self.delivery is not None
        for recipient in self.accepted:
            recipient.result = Outcome.QUEUED
        queued = self.delivery.audit_fields()
        return {
            "queue_id": queued.get("queue_id"),
            "client_ip": client_ip,
            "helo": helo,
            "sender": self.mail.sender.text,
            "recipients": [r.as_dict() for r in self.recipients],
            **self._omitted(),
            "rules": self.rules,
            "upstreams": queued["upstreams"],
            "size": self.facts.size,
            "message_id": self.message_id,
            "sha256": self.facts.sha256,
            **self._added(),
            "reply": str(reply),
        }
