"""The delivery runner: takes committed messages from the spool to their upstreams.

At start it recovers the spool (removes half-received messages, logs recipients
that may be delivered twice, schedules deferred ones), then every second it
looks at the spool: messages in ``active/`` that are not being delivered start
now, deferred messages whose time has come move to ``active/``, and messages
the operator moved to ``trash/`` are logged and removed. The operator commands
act only by renaming folders, so they are safe while this runs.

Each delivery groups the pending recipients by route (their rule's upstream
list) and takes one session per group from the same pools as relay mode (TLS,
verification, AUTH, reuse, ``max_connections`` shared with relay traffic),
failing over along the route with the same cool-downs: a connection, TLS or
4xx failure before any recipient is accepted moves the attempt to the next
upstream; a 5xx is final. The body is streamed
from disk in whole-line regions, dot-stuffed, with the transport pulling it.
Per recipient: 2xx is delivered (never sent again), 5xx failed, anything else
is retried with backoff until ``max_age``. Recipients are marked ``in_flight``
on disk before their session starts and cleared after: a crash in between is
the at-least-once window, logged as ``delivery.duplicate_risk`` at the next start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.audit.log import AuditLog
from gateway.config.model import Config
from gateway.daemon.metrics import QueueState
from gateway.outbound.failover import Cooldowns
from gateway.outbound.pool import PoolBusy, UpstreamPool
from gateway.outbound.upstream import UpstreamFailure, UpstreamSession
from gateway.queue import bounces as dsn
from gateway.queue.backoff import Backoff
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DELIVERED,
    DONE,
    FAILED,
    INCOMING,
    PENDING,
    TRASH,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
    read_headers,
    read_lines,
)
from gateway.smtp import replies
from gateway.smtp.data import dot_stuff
from gateway.smtp.replies import Reply

SCAN_INTERVAL = (
    1.0  # seconds between looks at the spool (operator commands take effect within this)
)


BAD_SPOOLED_ADDRESS = Reply(550, "5.1.3", "Address in the spool contains control characters")


def _clean(address: str) -> bool:
    """No CR, LF, NUL or other controls: a spool edited by hand must not inject SMTP commands."""
    return not any(ord(c) < 32 or ord(c) == 127 for c in address)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@implementer(IPullProducer)
class _BodyProducer:
    """Feeds the stored body to the upstream transport as it asks for more (bounded memory)."""

    def __init__(self, session: UpstreamSession, regions: Iterator[bytes]) -> None:
        self.session = session
        self.regions = regions
        self.done: defer.Deferred[None] = defer.Deferred()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.done.called:
            return
        try:
            region = next(self.regions)
        except StopIteration:
            self._end(None)
            return
        except OSError as exc:
            self._end(UpstreamFailure(replies.UPSTREAM_LOST, f"spool read failed: {exc.strerror}"))
            return
        self.session.write(dot_stuff(region))

    def stopProducing(self) -> None:  # noqa: N802
        self.lost("connection lost while sending the body")

    def lost(self, reason: str) -> None:
        if not self.done.called:
            self.done.errback(
                UpstreamFailure(replies.UPSTREAM_LOST, f"{self.session.config.name}: {reason}")
            )

    def _end(self, error: Exception | None) -> None:
        transport = self.session.transport
        if transport is not None and transport.producer is not None:
            transport.unregisterProducer()
        if not self.done.called:
            if error is None:
                self.done.callback(None)
            else:
                self.done.errback(error)


class DeliveryRunner:
    def __init__(
        self,
        reactor: Any,
        spool: Spool,
        config: Config,
        pools: Callable[[str], UpstreamPool | None],
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        interval: float = SCAN_INTERVAL,
        on_result: Callable[[dict[str, Any]], None] | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.config = config
        self.pools = pools
        self.cooldowns = cooldowns if cooldowns is not None else Cooldowns()
        self.audit = audit
        self.clock = clock
        self.interval = interval
        self.on_result = on_result  # metrics: called with each message.result's fields
        queue = config.queue
        self.backoff = Backoff(queue.min_backoff, queue.max_backoff, queue.max_age)
        self.slots: dict[
            str, defer.DeferredSemaphore
        ] = {}  # first upstream -> parallel queue deliveries
        self.in_flight: dict[str, defer.Deferred[None]] = {}
        self.schedule: dict[str, float] = {}  # deferred queue id -> when it is due
        self.duplicates: dict[
            str, set[str]
        ] = {}  # queue id -> recipients possibly delivered already
        self.uncertain: dict[
            str, set[str]
        ] = {}  # this attempt: the dot went out, the reply did not come
        self.unsaved: dict[
            str, dict[str, str]
        ] = {}  # queue id -> final recipient statuses not yet on disk
        self.sessions: dict[int, UpstreamSession] = {}  # by id(): sessions are not hashable
        self.unreadable: set[str] = set()
        self.stopping = False
        self._loop = task.LoopingCall(self.scan)
        self._loop.clock = reactor

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.spool.create()
        self.recover()
        self._loop.start(self.interval, now=True)

    def recover(self) -> None:
        """Pick up the spool as a crash or a stop left it."""
        discarded = self.spool.clear(INCOMING)
        if discarded:
            self.audit.event(
                "queue.incomplete_discarded",
                queue_ids=discarded,
                count=len(discarded),
                reason="half-received when the gateway stopped; never answered 250",
            )
        self.spool.clear(DONE)
        for state in (ACTIVE, DEFERRED):
            for queue_id in self.spool.ids(state):
                envelope = self._load(state, queue_id)
                if envelope is None:
                    continue
                risky = {
                    r.address for r in envelope.recipients if r.in_flight and r.status == PENDING
                }
                if risky:
                    self.duplicates[queue_id] = risky
                    self.audit.event(
                        "delivery.duplicate_risk",
                        queue_id=queue_id,
                        recipients=sorted(risky),
                        message_id=envelope.message_id,
                        reason="stopped during a delivery; the upstream may have accepted it, "
                        "it will be sent again (at-least-once)",
                    )
                if state == DEFERRED:
                    self.schedule[queue_id] = envelope.next_attempt
        self.audit.event(
            "queue.started",
            path=self.spool.path,
            active=len(self.spool.ids(ACTIVE)),
            deferred=len(self.schedule),
            dead=len(self.spool.ids(DEAD)),
        )

    async def stop(self, grace: float) -> None:
        """Stop starting deliveries; let those under way finish for `grace` seconds, then abort them."""
        self.stopping = True
        if self._loop.running:
            self._loop.stop()
        if self.in_flight:
            timer = self.reactor.callLater(grace, self._abort_sessions)
            await defer.DeferredList(list(self.in_flight.values()), consumeErrors=True)
            if timer.active():
                timer.cancel()

    def queue_state(self) -> QueueState:
        """Depth and oldest age for the metrics scrape (ids begin with the arrival time)."""
        ids = self.spool.ids(ACTIVE) + self.spool.ids(DEFERRED)
        oldest = min(ids) if ids else None
        age = max(0.0, self.clock() - int(oldest[:14], 16) / 1_000_000) if oldest else 0.0
        return QueueState(depth=len(ids), oldest_age_seconds=age)

    def _abort_sessions(self) -> None:
        for session in list(self.sessions.values()):
            session.abort()

    # --- what to do next -----------------------------------------------------------------

    def submitted(self, queue_id: str) -> None:
        """A session just committed `queue_id`: deliver it now."""
        if not self.stopping and queue_id not in self.in_flight:
            self._start(queue_id)

    def scan(self) -> None:
        try:
            self._scan()
        except OSError as exc:
            self.audit.event(
                "gateway.error", error=f"queue scan failed: {exc.strerror}", type="OSError"
            )

    def _scan(self) -> None:
        for queue_id in self.spool.ids(TRASH):
            if queue_id not in self.in_flight:
                self._deleted(queue_id)
        now = self.clock()
        waiting = set(self.spool.ids(DEFERRED))
        for queue_id in waiting - set(self.schedule):
            envelope = self._load(DEFERRED, queue_id)
            if envelope is not None:
                self.schedule[queue_id] = envelope.next_attempt
        for queue_id, due in sorted(self.schedule.items(), key=lambda item: item[1]):
            if queue_id not in waiting:
                del self.schedule[queue_id]  # retried or deleted by the operator
            elif due <= now:
                del self.schedule[queue_id]
                try:
                    self.spool.move(queue_id, DEFERRED, ACTIVE, durable=False)
                except MessageGone:
                    pass
        for queue_id in self.spool.ids(ACTIVE):
            if (
                queue_id not in self.in_flight
                and queue_id not in self.unreadable
                and not self.stopping
            ):
                self._start(queue_id)

    def _start(self, queue_id: str) -> None:
        d = defer.Deferred.fromCoroutine(self._deliver(queue_id))
        self.in_flight[queue_id] = d
        d.addErrback(self._internal_error, queue_id)
        d.addBoth(self._finished, queue_id)

    def _finished(self, _: object, queue_id: str) -> None:
        self.in_flight.pop(queue_id, None)

    def _internal_error(self, failure: Failure, queue_id: str) -> None:
        self.audit.event(
            "gateway.error",
            queue_id=queue_id,
            error=failure.getErrorMessage()[:300],
            type=failure.type.__name__ if failure.type else "unknown",
        )

    def _load(self, state: str, queue_id: str) -> Envelope | None:
        try:
            return self.spool.load(state, queue_id)
        except MessageGone:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            if queue_id not in self.unreadable:
                self.unreadable.add(queue_id)
                self.audit.event(
                    "queue.unreadable",
                    queue_id=queue_id,
                    state=state,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
            return None

    # --- one delivery round of one message -------------------------------------------------

    async def _deliver(self, queue_id: str) -> None:
        envelope = self._load(ACTIVE, queue_id)
        if envelope is None:
            return
        for recipient in envelope.recipients:  # outcomes this process knows but could not write
            status = self.unsaved.get(queue_id, {}).get(recipient.address)
            if status is not None:
                recipient.status, recipient.in_flight = status, False
        groups: dict[tuple[str, ...], list[RecipientState]] = {}
        for recipient in envelope.pending:
            groups.setdefault(recipient.hops, []).append(recipient)
        attempted = [False, False]  # a round was tried; a session was opened (the duplicate window)
        try:
            await defer.gatherResults(
                [
                    defer.Deferred.fromCoroutine(
                        self._attempt(envelope, name, group, attempted, len(groups) > 1)
                    )
                    for name, group in groups.items()
                ],
                consumeErrors=True,
            )
        except defer.FirstError as error:
            error.subFailure.trap(MessageGone)
            self._gone(envelope)
            return
        if attempted[0] or not envelope.pending:
            self._settle(envelope, opened=attempted[1])

    async def _attempt(
        self,
        envelope: Envelope,
        route: tuple[str, ...],
        group: list[RecipientState],
        attempted: list[bool],
        several: bool,
    ) -> None:
        configured = [hop for hop in route if self.pools(hop) is not None]
        name = configured[0] if configured else route[0]
        first = self.pools(name)
        if first is None:  # no upstream of the route is configured (any more)
            now = self.clock()
            for recipient in group:
                recipient.attempts += 1
                recipient.last_attempt = now
                recipient.last_reply = (
                    f"451 4.3.5 no upstream of the route {list(route)} is configured"
                )
            attempted[0] = True
            self.audit.event(
                "delivery.attempt",
                queue_id=envelope.id,
                upstream=name,
                recipients=[
                    {"address": r.address, "result": "deferred", "reply": r.last_reply}
                    for r in group
                ],
            )
            return
        slots = self.slots.get(name)
        if slots is None:
            slots = self.slots[name] = defer.DeferredSemaphore(first.config.max_connections)
        await slots.acquire()
        try:
            if self.stopping:
                return
            attempted[0] = True
            now = self.clock()
            for recipient in group:
                recipient.attempts += 1
                recipient.last_attempt = now
            envelope.attempts += 1
            answers, used, session, error, tried = await self._transact(route, envelope, group)
            attempted[1] = attempted[1] or session is not None
            uncertain = self.uncertain.pop(envelope.id, set())
            for recipient in group:
                recipient.in_flight = (
                    recipient.address in uncertain
                )  # still in the duplicate window
                reply = answers[recipient.address]
                recipient.last_reply = str(reply)
                if reply.is_positive:
                    recipient.status = DELIVERED
                elif reply.is_permanent:
                    recipient.status = FAILED
            self._log_attempt(envelope, used or first, group, answers, session, error, tried)
            if uncertain:  # logged as possible_duplicate on the next attempt
                self.duplicates.setdefault(envelope.id, set()).update(uncertain)
            if session is not None and several:
                self.spool.save(
                    ACTIVE, envelope
                )  # other upstreams' groups still running: record this one
        finally:
            slots.release()

    async def _transact(
        self, route: tuple[str, ...], envelope: Envelope, group: list[RecipientState]
    ) -> tuple[
        dict[str, Reply],
        UpstreamPool | None,
        UpstreamSession | None,
        str | None,
        list[dict[str, str]],
    ]:
        """One SMTP transaction, failing over along `route`; a reply for every recipient of the group."""
        tried: list[dict[str, str]] = []
        last: UpstreamFailure | None = None
        for name in self.cooldowns.order(route, self.clock()):
            pool = self.pools(name)
            if pool is None:
                tried.append({"upstream": name, "reason": "not configured"})
                continue
            try:
                session = await pool.acquire(envelope.sender or None)
            except UpstreamFailure as failure:
                if not isinstance(failure, PoolBusy):  # busy is not broken: no cool-down
                    self.cooldowns.failed(
                        name, self.reactor.seconds(), pool.config.failover_cooldown
                    )
                tried.append({"upstream": name, "reason": failure.reason})
                last = failure
                continue
            self.cooldowns.succeeded(name)
            if self.stopping:  # the session came after stop() began: start nothing new
                pool.release(session, reusable=True)
                return (
                    {
                        r.address: replies.SHUTTING_DOWN.with_text("Gateway stopping; will retry")
                        for r in group
                    },
                    None,
                    None,
                    "gateway stopping",
                    tried,
                )
            answers, error, mail_refused = await self._transact_on(pool, session, envelope, group)
            if mail_refused is not None and mail_refused.is_transient and name != route[-1]:
                tried.append(
                    {
                        "upstream": name,
                        "reason": f"MAIL answered {mail_refused.codes}",
                    }
                )
                continue
            return answers, pool, session, error, tried
        failure = last or UpstreamFailure(
            replies.UPSTREAM_UNREACHABLE, "no upstream of the route is configured"
        )
        reasons = "; ".join(t["reason"] for t in tried) or failure.reason
        return {r.address: failure.reply for r in group}, None, None, reasons, tried

    async def _transact_on(
        self,
        pool: UpstreamPool,
        session: UpstreamSession,
        envelope: Envelope,
        group: list[RecipientState],
    ) -> tuple[dict[str, Reply], str | None, Reply | None]:
        """MAIL, RCPTs, DATA and the body on a session; (answers, error, MAIL refusal if any)."""
        # From here the upstream may accept: mark the window on disk (MessageGone if deleted meanwhile).
        if not all(r.in_flight for r in group):
            for recipient in group:
                recipient.in_flight = True
            try:
                self.spool.save(ACTIVE, envelope)
            except BaseException:
                pool.release(session, reusable=True)
                raise
        self.sessions[id(session)] = session
        answers: dict[str, Reply] = {}
        accepted: list[RecipientState] = []
        dot_sent = False
        try:
            capabilities = session.capabilities
            if not all(_clean(a) for a in [envelope.sender, *(r.address for r in group)]):
                pool.release(session, reusable=True)
                return (
                    {r.address: BAD_SPOOLED_ADDRESS for r in group},
                    "control characters in spool",
                    None,
                )
            if envelope.mail_body == "8BITMIME" and "8BITMIME" not in capabilities:
                pool.release(session, reusable=True)
                return (
                    {r.address: replies.UPSTREAM_NO_8BIT for r in group},
                    "8BITMIME not offered",
                    None,
                )
            line = f"MAIL FROM:<{envelope.sender}>"
            if "SIZE" in capabilities:
                line += f" SIZE={envelope.size}"
            if envelope.mail_body and "8BITMIME" in capabilities:
                line += f" BODY={envelope.mail_body}"
            reply = replies.expected(await session.command(line.encode("utf-8")), 250)
            if reply.code != 250:
                pool.release(session, reusable=reply.code != 421)
                return {r.address: reply for r in group}, None, reply
            for recipient in group:
                reply = replies.expected(
                    await session.command(f"RCPT TO:<{recipient.address}>".encode()), 250, 251
                )
                answers[recipient.address] = reply
                if reply.is_positive:
                    accepted.append(recipient)
            if not accepted:
                pool.release(session, reusable=True)
                return answers, None, None
            reply = await session.command(b"DATA")
            if reply.code == 354:
                await self._send_body(session, envelope)
                dot_sent = True
                answer = await session.end_data()
                reply = replies.expected(answer, *range(200, 300))
                pool.release(session, reusable=reply is answer and reply.code != 421)
            else:
                reply = replies.expected(reply, 354)
                pool.release(session, reusable=False)
            for recipient in accepted:
                answers[recipient.address] = reply
            return answers, None, None
        except UpstreamFailure as failure:
            pool.release(session, reusable=False)
            for recipient in group:
                if recipient.address not in answers or recipient in accepted:
                    answers[recipient.address] = failure.reply
            if dot_sent:  # the upstream may have taken it: a retry is a possible duplicate
                self.uncertain.setdefault(envelope.id, set()).update(r.address for r in accepted)
            return answers, failure.reason, None
        finally:
            self.sessions.pop(id(session), None)

    async def _send_body(self, session: UpstreamSession, envelope: Envelope) -> None:
        producer = _BodyProducer(session, read_lines(self.spool.body_path(ACTIVE, envelope.id)))
        session.protocol.closed.addCallback(
            lambda _: producer.lost("connection lost while sending the body")
        )
        timer = self.reactor.callLater(
            session.config.data_timeout, session.protocol.abort, "timeout sending the body"
        )
        try:
            session.transport.registerProducer(producer, False)
            await producer.done
        finally:
            if timer.active():
                timer.cancel()

    def _log_attempt(
        self,
        envelope: Envelope,
        pool: UpstreamPool,
        group: list[RecipientState],
        answers: dict[str, Reply],
        session: UpstreamSession | None,
        error: str | None,
        tried: list[dict[str, str]],
    ) -> None:
        up = pool.config
        risky = self.duplicates.get(envelope.id, set())
        fields: dict[str, Any] = {
            "queue_id": envelope.id,
            "message_id": envelope.message_id,
            "upstream": up.name,
            "upstream_host": up.host,
            "upstream_port": up.port,
            "tls_mode": up.tls,
            "attempt": max(r.attempts for r in group),
            "recipients": [
                {
                    "address": r.address,
                    "reply": str(answers[r.address]),
                    "result": "delivered"
                    if r.status == DELIVERED
                    else "failed"
                    if r.status == FAILED
                    else "deferred",
                }
                for r in group
            ],
        }
        if session is not None:
            fields.update(
                tls_version=session.tls.version,
                tls_cipher=session.tls.cipher,
                peer_cert_sha256=session.tls.peer_cert_sha256,
                auth_user=session.auth_user,
            )
        if error:
            fields["upstream_error"] = error
        if tried:
            fields["upstreams_tried"] = tried
        duplicate = sorted(r.address for r in group if r.address in risky)
        if duplicate:
            fields["possible_duplicate"] = duplicate
            risky.difference_update(duplicate)
        self.audit.event("delivery.attempt", **fields)

    # --- after a round --------------------------------------------------------------------

    def _settle(self, envelope: Envelope, opened: bool = True) -> None:
        now = self.clock()
        pending = envelope.pending
        if pending:
            attempts = max(r.attempts for r in pending)
            due = self.backoff.next_attempt(envelope.age_base, attempts, now)
            if due is None:
                for recipient in pending:
                    recipient.status = FAILED
                    recipient.expired = True
            else:
                envelope.next_attempt = due
        self._bounce(envelope, now)
        if not envelope.pending:
            self.duplicates.pop(envelope.id, None)
        # Durable when this round changed what must never be redone (a delivery, a failure, a DSN);
        # a round of transient failures only needs the new backoff, which a crash may shorten.
        changed = opened or any(r.status != PENDING for r in envelope.recipients)
        try:
            try:
                self.spool.save(ACTIVE, envelope, durable=changed)
            except OSError as exc:
                self._save_failed(envelope, exc, now)
                return
            self.unsaved.pop(envelope.id, None)
            if envelope.pending:
                self.spool.move(envelope.id, ACTIVE, DEFERRED, durable=False)
                self.schedule[envelope.id] = envelope.next_attempt
                self.audit.event(
                    "message.deferred",
                    queue_id=envelope.id,
                    message_id=envelope.message_id,
                    recipients=[r.address for r in envelope.pending],
                    attempts=envelope.attempts,
                    next_attempt=_iso(envelope.next_attempt),
                )
                return
            self._result(envelope)
            if any(r.status == FAILED for r in envelope.recipients):
                self.spool.move(envelope.id, ACTIVE, DEAD, durable=False)
                self.audit.event(
                    "message.dead",
                    queue_id=envelope.id,
                    message_id=envelope.message_id,
                    recipients=[r.address for r in envelope.recipients if r.status == FAILED],
                    reason="kept in the dead-letter area (mailgate queue dead)",
                )
            else:
                self.spool.move(envelope.id, ACTIVE, DONE, durable=False)
                self.spool.remove(DONE, envelope.id)
        except MessageGone:
            self._gone(envelope)

    def _save_failed(self, envelope: Envelope, exc: OSError, now: float) -> None:
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
            "queue.write_failed",
            queue_id=envelope.id,
            error=exc.strerror or type(exc).__name__,
            delivered_not_recorded=sorted(sent),
            next_attempt=_iso(due),
        )
        try:
            self.spool.move(envelope.id, ACTIVE, DEFERRED, durable=False)
            self.schedule[envelope.id] = due
        except (OSError, MessageGone):
            pass  # it stays in active/ and is tried at the next scan, still flagged

    def _bounce(self, envelope: Envelope, now: float) -> None:
        failed = [r for r in envelope.recipients if r.status == FAILED and not r.bounced]
        if not failed or not self.config.queue.bounce or not dsn.wants_bounce(envelope):
            return
        dsn_id = new_id(now)
        try:
            headers = read_headers(self.spool.body_path(ACTIVE, envelope.id))
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
            self.spool.store(bounce, body)
        except OSError as exc:
            self.audit.event(
                "gateway.error",
                queue_id=envelope.id,
                type="OSError",
                error=f"could not queue the DSN: {exc.strerror}; will try again next round",
            )
            return
        for recipient in failed:
            recipient.bounced = True
        self.audit.event(
            "message.bounced",
            queue_id=envelope.id,
            dsn_queue_id=dsn_id,
            to=envelope.sender,
            recipients=[r.address for r in failed],
            upstream=failed[0].upstream,
        )
        self.submitted(dsn_id)

    def _result(self, envelope: Envelope, outcome: str | None = None) -> None:
        statuses = {r.status for r in envelope.recipients}
        if outcome is None:
            outcome = (
                "delivered"
                if statuses == {DELIVERED}
                else "failed"
                if statuses == {FAILED}
                else "partial"
            )
        fields: dict[str, Any] = {
            "queue_id": envelope.id,
            "delivery": "queue",
            "sender": envelope.sender,
            "message_id": envelope.message_id,
            "size": envelope.size,
            "sha256": envelope.sha256,
            "received": _iso(envelope.received),
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
        }
        if envelope.session_id:
            fields["origin_session_id"] = envelope.session_id
        if envelope.bounce_of:
            fields["bounce_of"] = envelope.bounce_of
        self.audit.event("message.result", **fields)
        if self.on_result is not None:
            first = envelope.recipients[0].upstream if envelope.recipients else None
            rules = sorted({r.rule for r in envelope.recipients if r.rule})
            self.on_result({**fields, "rules": rules, "upstream": first})

    def _gone(self, envelope: Envelope) -> None:
        """The operator moved the message away during its delivery (delete): the trash handler logs it."""
        self.schedule.pop(envelope.id, None)
        self.duplicates.pop(envelope.id, None)

    def _deleted(self, queue_id: str) -> None:
        envelope = self._load(TRASH, queue_id)
        self.schedule.pop(queue_id, None)
        if envelope is not None:
            pending = envelope.pending
            self.audit.event(
                "message.deleted",
                queue_id=queue_id,
                message_id=envelope.message_id,
                sender=envelope.sender,
                recipients=[r.address for r in pending],
                reason="deleted by the operator (mailgate queue delete)",
            )
            if pending:
                for recipient in pending:
                    recipient.status = "deleted"
                self._result(envelope, "deleted")
        self.spool.remove(TRASH, queue_id)
