"""The delivery runner: takes committed messages from the spool to their upstreams.

At start it recovers the spool (removes half-received messages, logs recipients
that may be delivered twice, schedules deferred ones), then every second it
looks at the spool: messages in ``active/`` that are not being delivered start
now, deferred messages whose time has come move to ``active/``, and messages
the operator moved to ``trash/`` are logged and removed. The operator commands
act only by renaming folders (or writing a marker file), so they are safe while this runs.

Holds (``mailgate queue hold``, `gateway.queue.holds`): ``hold/`` is never started; a recipient
whose next upstream is held is left out of the round (also when the hold came while its group
waited for a session: looked at again before MAIL), and a message with nothing else pending is
parked in ``deferred/`` until that upstream is released or is no longer its next upstream (a
reload took it out of the config): each scan looks at the parked messages again. Each scan also
looks at the free space (`gateway.queue.space`, ``queue.min_free``).

One delivery round of a message is `gateway.queue.attempt` (the shared outbound
transaction, per route); what the round leaves — backoff, bounce, the durable record,
the next folder — is `gateway.queue.settle`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from gateway.audit.events import Event, Outcome
from gateway.audit.log import AuditLog
from gateway.config.model import Config
from gateway.outbound.failover import Cooldowns
from gateway.outbound.pacing import Budgets
from gateway.outbound.pool import UpstreamPool
from gateway.queue import quarantine
from gateway.queue.attempt import DeliveryAttempts
from gateway.queue.drain import DrainWatch, holding, requested_at
from gateway.queue.envelope import RecipientStatus
from gateway.queue.holds import HoldWatch
from gateway.queue.settle import Settler
from gateway.queue.space import FreeSpace
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DONE,
    HOLD,
    INCOMING,
    PENDING,
    QUEUED,
    TRASH,
    Envelope,
    EnvelopeInvalid,
    MessageGone,
    Spool,
)
from gateway.queue.state import QueueState

SCAN_INTERVAL = (
    1.0  # seconds between looks at the spool (operator commands take effect within this)
)


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
        on_drain: Callable[[bool], None] | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.reactor = reactor
        self.spool = spool
        self.config = config
        self.pools = pools
        self.cooldowns = cooldowns if cooldowns is not None else Cooldowns()
        self.audit = audit
        self.clock = clock
        self.interval = interval
        self.in_flight: dict[str, defer.Deferred[None]] = {}
        self.schedule: dict[str, float] = {}  # deferred queue id -> when it is due
        self.duplicates: dict[str, set[str]] = {}  # queue id -> recipients possibly delivered
        self.unreadable: set[str] = set()
        self.stopping = False
        self._sweeping = False  # done/ is being emptied in a thread
        self.paced: set[str] = set()  # queue ids waiting for a provider budget (metrics)
        self.holds = HoldWatch(spool, audit)
        # In deferred/ only because their next upstream is held: queue id -> the routes waiting.
        self.parked: dict[str, set[tuple[str, ...]]] = {}
        self.attempts = DeliveryAttempts(
            reactor,
            spool,
            pools,
            self.cooldowns,
            audit,
            clock,
            self.duplicates,
            budgets,
            held_upstreams=self.holds.current,
        )
        self.settler = Settler(spool, config, audit, clock, self.submitted, on_result)
        self.drain = DrainWatch(spool)
        self.space = FreeSpace(spool.path, config.queue.min_free, clock=reactor.seconds)
        self.on_drain = on_drain
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
                Event.QUEUE_INCOMPLETE_DISCARDED,
                queue_ids=discarded,
                count=len(discarded),
                reason="half-received when the gateway stopped; never answered 250",
            )
        self.spool.clear(DONE)
        self.holds.start()
        for state in (ACTIVE, DEFERRED, HOLD):  # a held message may be in its duplicate window
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
                        Event.DELIVERY_DUPLICATE_RISK,
                        queue_id=queue_id,
                        recipients=sorted(risky),
                        message_id=envelope.message_id,
                        reason="stopped during a delivery; the upstream may have accepted it, "
                        "it will be sent again (at-least-once)",
                    )
                if state == DEFERRED:
                    self.schedule[queue_id] = envelope.next_attempt
        self.audit.event(
            Event.QUEUE_STARTED,
            path=self.spool.path,
            active=len(self.spool.ids(ACTIVE)),
            deferred=len(self.schedule),
            dead=len(self.spool.ids(DEAD)),
            held=len(self.holds.messages),
            held_upstreams=sorted(self.holds.upstreams),
        )

    async def stop(self, grace: float) -> None:
        """Stop starting deliveries; let those under way finish for `grace` seconds, then abort them."""
        self.stopping = True
        self.attempts.stop()
        if self._loop.running:
            self._loop.stop()
        if self.in_flight:
            timer = self.reactor.callLater(grace, self.attempts.cut_short)
            await defer.DeferredList(list(self.in_flight.values()), consumeErrors=True)
            if timer.active():
                timer.cancel()

    def queue_state(self) -> QueueState:
        """Depth and oldest age for the metrics scrape (ids begin with the arrival time)."""
        ids = self.spool.ids(ACTIVE) + self.spool.ids(DEFERRED)
        oldest = min(ids) if ids else None
        age = max(0.0, self.clock() - int(oldest[:14], 16) / 1_000_000) if oldest else 0.0
        return QueueState(
            depth=len(ids),
            oldest_age_seconds=age,
            held=len(self.spool.ids(HOLD)),
            free_bytes=self.space.free(),
        )

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
                Event.GATEWAY_ERROR, error=f"queue scan failed: {exc.strerror}", type="OSError"
            )

    @property
    def draining(self) -> bool:
        """``mailgate queue drain`` asked this instance to stop taking queued mail."""
        return self.drain.draining

    def _watch_drain(self) -> None:
        """Take up a drain request (or its cancellation); say when a drain is done."""
        change = self.drain.look()
        if change == "started":
            left = holding(self.spool)
            line = self.drain.line or ""
            self.audit.event(
                Event.QUEUE_DRAIN_STARTED,
                path=self.spool.path,
                requested_at=requested_at(line),
                incoming=left.incoming,
                active=left.active,
                deferred=left.deferred,
            )
            self.schedule.clear()  # every deferred message is due now, once
            for queue_id in self.spool.ids(DEFERRED):
                try:
                    self.spool.move(queue_id, DEFERRED, ACTIVE, durable=False)
                except MessageGone:
                    pass
        elif change == "resumed":
            self.audit.event(Event.QUEUE_DRAIN_CANCELLED, path=self.spool.path)
        if change is not None and self.on_drain is not None:
            self.on_drain(self.drain.draining)
        if self.drain.draining:
            left = holding(self.spool)
            if self.drain.finished(left):
                started = requested_at(self.drain.line or "")
                self.audit.event(
                    Event.QUEUE_DRAINED,
                    path=self.spool.path,
                    duration_s=round(self.clock() - started, 3) if started else None,
                    dead=left.dead,
                    quarantine=left.quarantine,
                )

    def _watch_holds(self) -> None:
        """Take up the holds changed since the last scan: a held message is forgotten here, and
        a parked message one of whose waiting routes no longer waits (its upstream released, or
        a reload changed its next upstream) is due now (what still waits parks again)."""
        for queue_id in self.holds.look_messages():
            self.schedule.pop(queue_id, None)
            self.parked.pop(queue_id, None)
        self.holds.look_upstreams()
        configured = self._configured
        for queue_id, routes in list(self.parked.items()):
            if self.schedule.get(queue_id) != math.inf:
                del self.parked[queue_id]  # retried, released, deleted or finished meanwhile
            elif not self.holds.still_waiting(routes, configured):
                del self.parked[queue_id]
                self.schedule[queue_id] = 0.0

    def _configured(self, name: str) -> bool:
        return self.pools(name) is not None

    def _sweep_done(self) -> None:
        """Remove the delivered messages (``done/``) in one batch, off the reactor when it has
        threads (each removal is several unlinks: kept off the delivery's path)."""
        if self._sweeping or not self.spool.ids(DONE):
            return
        in_thread = getattr(self.reactor, "callInThread", None)
        if in_thread is None:
            self.spool.clear(DONE)
            return
        self._sweeping = True

        def sweep() -> None:
            try:
                self.spool.clear(DONE)
            finally:
                self.reactor.callFromThread(setattr, self, "_sweeping", False)

        in_thread(sweep)

    def _scan(self) -> None:
        self._watch_drain()
        self._watch_holds()
        self.space.watch(self.audit)
        self._sweep_done()
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
            Event.GATEWAY_ERROR,
            queue_id=queue_id,
            error=failure.getErrorMessage()[:300],
            type=failure.type.__name__ if failure.type else "unknown",
        )

    def _load(self, state: str, queue_id: str) -> Envelope | None:
        """The envelope, or None: gone, set aside in quarantine/ (once), or unreadable (logged once)."""
        try:
            return self.spool.load(state, queue_id)
        except MessageGone:
            return None
        except (ValueError, TypeError, KeyError, OSError) as exc:
            if queue_id not in self.unreadable:
                if (
                    state in QUEUED
                    and isinstance(exc, EnvelopeInvalid)
                    and quarantine.set_aside(self.spool, self.audit, state, queue_id, exc)
                ):
                    return None
                self.unreadable.add(queue_id)
                self.audit.event(
                    Event.QUEUE_UNREADABLE,
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
        self.settler.restore(envelope)
        held = self.holds.waiting(envelope, self._configured)
        if held and all(r.hops in held for r in envelope.pending):
            self._park(envelope, held)
            return
        try:
            round_ = await self.attempts.run(envelope, held)
            if not round_.attempted and envelope.pending:
                return  # stopping before any group started: nothing changed
            held |= round_.held  # held while the group waited for its session
            try:
                paced = round_.paced
                due = self.settler.settle(
                    envelope, round_.opened, round_.upstream_fields(), paced, held
                )
                if paced is not None and envelope.pending:
                    self.paced.add(envelope.id)
                else:
                    self.paced.discard(envelope.id)
            finally:
                if not envelope.pending:
                    self.duplicates.pop(envelope.id, None)
        except MessageGone:
            self._gone(envelope)
            return
        if due is not None:
            self.schedule[envelope.id] = due
            if due == math.inf:
                self.parked[envelope.id] = {r.hops for r in envelope.pending}

    def _park(self, envelope: Envelope, routes: set[tuple[str, ...]]) -> None:
        """Every pending recipient waits for a held upstream: out of active/, due when released."""
        try:
            self.spool.move(envelope.id, ACTIVE, DEFERRED, durable=False)
        except MessageGone:
            self._gone(envelope)
            return
        if self.spool.locate(envelope.id) == DEFERRED:
            self.schedule[envelope.id] = math.inf
            self.parked[envelope.id] = routes

    # --- after a round --------------------------------------------------------------------

    def _gone(self, envelope: Envelope) -> None:
        """The operator moved the message away during its delivery (delete): the trash handler logs it."""
        self.schedule.pop(envelope.id, None)
        self.duplicates.pop(envelope.id, None)
        self.paced.discard(envelope.id)
        self.parked.pop(envelope.id, None)

    def _deleted(self, queue_id: str) -> None:
        envelope = self._load(TRASH, queue_id)
        self.schedule.pop(queue_id, None)
        if envelope is not None:
            pending = envelope.pending
            self.audit.event(
                Event.MESSAGE_DELETED,
                queue_id=queue_id,
                message_id=envelope.message_id,
                sender=envelope.sender,
                recipients=[r.address for r in pending],
                reason="deleted by the operator (mailgate queue delete)",
            )
            if pending:
                for recipient in pending:
                    recipient.status = RecipientStatus.DELETED
                self.settler.result(envelope, Outcome.DELETED)
        self.spool.remove(TRASH, queue_id)
