"""One delivery round of one queued message, over the shared outbound transaction.

The pending recipients are grouped by route (their rule's upstream list); each group is one
`gateway.outbound.transaction.Transaction` — the same failover, cool-downs, MAIL/RCPT lines,
reply rules and pools (``max_connections`` shared with relay traffic) as cut-through relay —
with all its recipients sent at once (MAIL, every RCPT and DATA in one write where the
upstream offers PIPELINING, RFC 2920: the 503 to DATA after every recipient was refused is
nobody's result) and the body pulled from the spool file. At most
``max_connections`` groups run at once per first upstream (``max_connections_per_identity``
when that is lower and the upstream sends as one ``username``: the rest would only wait).

Per recipient: 2xx is delivered (never sent again), 5xx failed, anything else is retried.
Recipients are marked ``in_flight`` on disk once a session is in hand, before MAIL, and
cleared after: a crash in between is the at-least-once window, logged as
``delivery.duplicate_risk`` at the next start; a final dot whose reply never came keeps the
mark, and the next attempt is logged with ``possible_duplicate``. Each group's try is one
``delivery.attempt`` record with the transaction's upstream fields.

A hold (``mailgate queue hold``) that came while the group waited for its slot or session is
looked at once more at the mark, the last moment before MAIL: the message in ``hold/``
(`MessageGone`: the session goes back unused) or its next upstream held (the group is left
out, as if it had been held when the round started: `Round.held`) and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.audit.events import Event
from gateway.audit.log import AuditLog
from gateway.outbound.failover import Cooldowns
from gateway.outbound.pacing import Budgets
from gateway.outbound.pool import UpstreamPool
from gateway.outbound.transaction import Transaction
from gateway.queue.spool import (
    ACTIVE,
    DELIVERED,
    FAILED,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    read_lines,
)
from gateway.smtp import replies
from gateway.smtp.replies import Reply

STOPPING = replies.SHUTTING_DOWN.with_text("Gateway stopping; will retry")


class UpstreamHeld(Exception):
    """The group's next upstream was held before MAIL went out: the group waits."""


@dataclass
class GroupResult:
    """How one group's transaction ended: a reply per recipient address."""

    answers: dict[str, Reply]
    transaction: Transaction
    uncertain: set[str] = field(default_factory=set)  # the dot went out, its reply did not come


@dataclass
class Round:
    """What one delivery round did to a message."""

    attempted: bool = False  # a group was tried (its recipients' attempts were counted)
    # Groups kept back by a provider budget or a throttling pause (not counted as attempts),
    # and the groups that were really tried: the round waits for the budget only when all were.
    paced_until: list[float] = field(default_factory=list)
    counted: int = 0
    opened: bool = False  # a session was in hand: the upstream may have taken something
    transactions: list[Transaction] = field(default_factory=list)
    held: set[tuple[str, ...]] = field(default_factory=set)  # routes held before their MAIL

    @property
    def paced(self) -> float | None:
        """When the message may go, if every group tried was kept back by a budget or a pause."""
        return min(self.paced_until) if self.paced_until and not self.counted else None

    def upstream_fields(self) -> dict[str, Any]:
        """The upstream fields the round's transactions agree on, for ``message.result``.

        One route (the usual case): all of that transaction's fields. Several: the fields with
        one value across those that had a session (TLS version, AUTH user, ...), so a message
        whose groups went to different upstreams names none at the top level.
        """
        used = [t for t in self.transactions if t.session is not None] or self.transactions
        if not used:
            return {}
        first, *others = (t.audit_fields() for t in used)
        return {k: v for k, v in first.items() if all(o.get(k) == v for o in others)}


class DeliveryAttempts:
    """Runs delivery rounds; shared by every message of one runner."""

    def __init__(
        self,
        reactor: Any,
        spool: Spool,
        pools: Callable[[str], UpstreamPool | None],
        cooldowns: Cooldowns,
        audit: AuditLog,
        clock: Callable[[], float],
        duplicates: dict[str, set[str]],
        budgets: Budgets | None = None,
        held_upstreams: Callable[[], Container[str]] = frozenset,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.pools = pools
        self.cooldowns = cooldowns
        self.audit = audit
        self.clock = clock
        self.duplicates = duplicates  # queue id -> recipients possibly delivered already
        self.budgets = budgets  # provider budgets (gateway.outbound.pacing)
        self.held_upstreams = held_upstreams  # the upstreams held now (`gateway.queue.holds`)
        self.slots: dict[str, defer.DeferredSemaphore] = {}  # first upstream -> parallel groups
        self.live: set[Transaction] = set()
        self.stopping = False

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Start no group; a transaction still waiting for its session sends nothing."""
        self.stopping = True
        for txn in list(self.live):
            if txn.session is None:
                txn.abort("gateway stopping", STOPPING)

    def cut_short(self) -> None:
        """The grace period is over: drop every upstream session still delivering."""
        for txn in list(self.live):
            txn.abort("gateway stopping: shutdown_grace is over")

    # --- one round ---------------------------------------------------------------------------

    async def run(self, envelope: Envelope, held: Container[tuple[str, ...]] = ()) -> Round:
        """Deliver the pending recipients of `envelope` but those on a `held` route (they wait);
        raises `MessageGone` if it was moved away."""
        groups: dict[tuple[str, ...], list[RecipientState]] = {}
        for recipient in envelope.pending:
            if recipient.hops not in held:
                groups.setdefault(recipient.hops, []).append(recipient)
        round_ = Round()
        # Every group ends before the round does, even when one found the message gone (deleted,
        # or held before its MAIL): another may be past its MAIL, and its record must be written
        # before the message can be released and started again.
        results = await defer.DeferredList(
            [
                defer.Deferred.fromCoroutine(
                    self._group(envelope, route, group, round_, len(groups) > 1)
                )
                for route, group in groups.items()
            ],
            consumeErrors=True,
        )
        for ok, outcome in results:
            if not ok:
                cast(Failure, outcome).trap(MessageGone)
                raise MessageGone(envelope.id)
        return round_

    async def _group(
        self,
        envelope: Envelope,
        route: tuple[str, ...],
        group: list[RecipientState],
        round_: Round,
        several: bool,
    ) -> None:
        configured = [hop for hop in route if self.pools(hop) is not None]
        name = configured[0] if configured else route[0]
        first = self.pools(name)
        if first is None:  # no upstream of the route is configured (any more)
            self._unroutable(envelope, route, group)
            round_.attempted = True
            return
        slots = self.slots.get(name)
        if slots is None:
            slots = self.slots[name] = defer.DeferredSemaphore(first.parallel)
        await slots.acquire()
        try:
            if self.stopping:
                return
            round_.attempted = True
            now = self.clock()
            for recipient in group:
                recipient.attempts += 1
                recipient.last_attempt = now
            envelope.attempts += 1
            txn = Transaction(
                route,
                self.pools,
                self.cooldowns,
                self.reactor,
                envelope.sender,
                size=envelope.size,
                body=envelope.mail_body,
                budgets=self.budgets,
            )
            # The slot it may have been promised (it goes first when it comes back for it).
            txn.pacer.promised = envelope.next_attempt or None
            self.live.add(txn)
            try:
                result = await self._transact(txn, envelope, group, name)
            except (MessageGone, UpstreamHeld) as stopped:
                for recipient in group:  # nothing was sent on the session: not an attempt
                    recipient.attempts -= 1
                envelope.attempts -= 1
                if isinstance(stopped, MessageGone):
                    raise
                round_.held.add(route)
                return
            except Exception as exc:  # noqa: BLE001 - our bug: this round is deferred, not lost
                result = self._internal_error(txn, envelope, group, exc)
            finally:
                self.live.discard(txn)
            round_.opened = round_.opened or txn.session is not None
            round_.transactions.append(txn)
            paced = txn.pacer.paced
            if paced is not None and all(
                not result.answers[r.address].is_positive
                and not result.answers[r.address].is_permanent
                for r in group
            ):
                # Kept back by a budget or the provider's throttling: waiting is not failing.
                for recipient in group:
                    recipient.attempts -= 1
                envelope.attempts -= 1
                paced = txn.pacer.promise() or paced  # the slot kept for it (oldest first)
                round_.paced_until.append(paced.until)
            else:
                round_.counted += 1
            for recipient in group:
                recipient.in_flight = recipient.address in result.uncertain  # still in the window
                reply = result.answers[recipient.address]
                recipient.last_reply = str(reply)
                if reply.is_positive:
                    recipient.status = DELIVERED
                elif reply.is_permanent:
                    recipient.status = FAILED
            self._log(envelope, group, result)
            if result.uncertain:  # logged as possible_duplicate on the next attempt
                self.duplicates.setdefault(envelope.id, set()).update(result.uncertain)
            if txn.session is not None and several:
                self.spool.save(ACTIVE, envelope)  # other routes' groups still run: record this one
        finally:
            slots.release()

    async def _transact(
        self, txn: Transaction, envelope: Envelope, group: list[RecipientState], next_hop: str
    ) -> GroupResult:
        """MAIL, every RCPT, DATA and the stored body: a reply for each recipient of the group."""

        def mark_in_flight() -> None:
            """The upstream may accept from here. `MessageGone` if it was deleted or held (in
            ``hold/``: the save does not follow it there), `UpstreamHeld` if its next upstream is."""
            if not self.spool.present(ACTIVE, envelope.id):
                raise MessageGone(envelope.id)
            if next_hop in self.held_upstreams():
                raise UpstreamHeld(next_hop)
            if all(r.in_flight for r in group):
                return  # marked already (an earlier upstream of the route, or an earlier round)
            was = [r.in_flight for r in group]
            for recipient in group:
                recipient.in_flight = True
            try:
                self.spool.save(ACTIVE, envelope, follow_hold=False)
            except MessageGone:
                for recipient, flag in zip(group, was, strict=True):
                    recipient.in_flight = flag
                raise

        addresses = [r.address for r in group]
        # Every recipient is known: DATA goes with MAIL and the RCPTs where PIPELINING is offered.
        answered = await txn.open(addresses, mark_in_flight, data=True)
        answers = dict(zip(addresses, answered, strict=True))
        accepted = [r for r in group if answers[r.address].is_positive]
        if txn.failure is None and not accepted:
            txn.release(reusable=True)  # every recipient refused: nothing to send
        elif txn.failure is None:
            reply = await txn.data()
            if reply.code == 354:
                await txn.send_body(read_lines(self.spool.body_path(ACTIVE, envelope.id)))
                reply = await txn.end()
            for recipient in accepted:
                answers[recipient.address] = reply
        if txn.failure is None:
            return GroupResult(answers, txn)
        for recipient in accepted:  # accepted, but the message did not get through
            answers[recipient.address] = txn.failure.reply
        # The dot went out and no reply came: the upstream may have taken it.
        uncertain = {r.address for r in accepted} if txn.dot_sent else set()
        return GroupResult(answers, txn, uncertain)

    def _internal_error(
        self, txn: Transaction, envelope: Envelope, group: list[RecipientState], exc: Exception
    ) -> GroupResult:
        """Our own code raised during the group's transaction: drop its session (the slot is
        free again), record the error, and defer the group like any temporary failure."""
        txn.abort(f"internal error ({type(exc).__name__})", replies.DELIVERY_INTERNAL_ERROR)
        self.audit.event(
            Event.GATEWAY_ERROR,
            queue_id=envelope.id,
            error=str(exc)[:300],
            type=type(exc).__name__,
        )
        answers = {r.address: replies.DELIVERY_INTERNAL_ERROR for r in group}
        uncertain = {r.address for r in group} if txn.dot_sent else set()
        return GroupResult(answers, txn, uncertain)

    # --- the records -------------------------------------------------------------------------

    def _unroutable(
        self, envelope: Envelope, route: tuple[str, ...], group: list[RecipientState]
    ) -> None:
        now = self.clock()
        for recipient in group:
            recipient.attempts += 1
            recipient.last_attempt = now
            recipient.last_reply = f"451 4.3.5 no upstream of the route {list(route)} is configured"
        self.audit.event(
            Event.DELIVERY_ATTEMPT,
            queue_id=envelope.id,
            upstream=route[0],
            recipients=[
                {"address": r.address, "result": "deferred", "reply": r.last_reply} for r in group
            ],
        )

    def _log(self, envelope: Envelope, group: list[RecipientState], result: GroupResult) -> None:
        risky = self.duplicates.get(envelope.id, set())
        fields: dict[str, Any] = {
            "queue_id": envelope.id,
            "message_id": envelope.message_id,
            **result.transaction.audit_fields(),
            "attempt": max(r.attempts for r in group),
            "recipients": [
                {
                    "address": r.address,
                    "reply": str(result.answers[r.address]),
                    "result": "delivered"
                    if r.status == DELIVERED
                    else "failed"
                    if r.status == FAILED
                    else "deferred",
                }
                for r in group
            ],
        }
        duplicate = sorted(r.address for r in group if r.address in risky)
        if duplicate:
            fields["possible_duplicate"] = duplicate
            risky.difference_update(duplicate)
        self.audit.event(Event.DELIVERY_ATTEMPT, **fields)
