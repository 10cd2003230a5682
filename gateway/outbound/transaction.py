"""One mail transaction with an upstream of a route: the core that relay and queue both run on.

`Transaction.open` takes a session from the first usable upstream of the route (pooled, or
newly opened: TLS, verification, AUTH) and sends MAIL and the recipients known so far, pipelined
where the upstream offers PIPELINING (RFC 2920): in one write with a reused session's RSET
and, for the queue (`data=True`), DATA (`gateway.outbound.flight`; an RSET that fails there
closes that session and the pool is asked again, as its own RSET check would). Failover, the
same for relay and queue:

- an upstream that cannot give a session (connection, TLS, greeting, EHLO, AUTH) is put in
  cool-down (`gateway.outbound.failover`) unless its pool was only busy, and the next is tried;
  a permanent refusal of the message itself (the upstream's 5xx, answered 5xx) ends the search;
- MAIL refused (4xx, 421 or the connection lost) on a reused connection is tried once more on
  a fresh one to the same upstream: its per-connection limit, which the pool then learns
  (`gateway.outbound.classify` says what a reply means; `gateway.outbound.pool` keeps the limit);
- MAIL answered 4xx moves to the next upstream; 5xx is final; either way the session, unless
  it said 421, goes back to its pool (RSET at its next use), as after refused recipients, a
  refused DATA or a refused message;
- a hop the configuration no longer has is skipped.

Then `rcpt` (more recipients, for cut-through), `data`, `write` or `send_body` (dot-stuffed),
and `end` (the final dot). Each returns the upstream's reply after `expected` (so an odd
positive code is never taken for success), or, once the transaction failed, `failure.reply`.
A pooled session goes back to its pool after a complete reply (reusable unless it said 421)
and is dropped after any break.
`audit_fields` is what every record of the transaction says about the upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.outbound import envelope, record
from gateway.outbound.body import Throttle, pull
from gateway.outbound.classify import Verdict, final, reflect, reusable, verdict
from gateway.outbound.connector import UpstreamSession
from gateway.outbound.failover import Cooldowns
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.flight import STALE, Flight, Stale
from gateway.outbound.pacing import Budgets, Pacer, budget_reply
from gateway.outbound.pool import PoolBusy, UpstreamPool
from gateway.smtp import replies
from gateway.smtp.data import dot_stuff
from gateway.smtp.replies import Reply, expected

Pools = Callable[[str], UpstreamPool | None]  # upstream name -> its pool (None: not configured)

__all__ = ["Pools", "Transaction", "final", "reflect", "reusable"]  # the reply rules: `classify`


class Transaction:
    """MAIL, RCPTs, DATA and the final dot over a route of upstreams, with failover."""

    def __init__(
        self,
        route: Sequence[str],
        pools: Pools,
        cooldowns: Cooldowns,
        clock: Any,
        sender: str,
        *,
        size: int | None = None,
        body: str | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.route = tuple(route)
        self.pools = pools
        self.cooldowns = cooldowns
        self.clock = clock  # IReactorTime: cool-downs and the body timeout
        self.sender = sender  # "" is the null sender
        self.size = size
        self.body = body  # "8BITMIME", "7BIT" or None, as given at MAIL
        self.pool: UpstreamPool | None = None
        self.session: UpstreamSession | None = None
        self.failure: UpstreamFailure | None = None
        self.upstream_reply: Reply | None = None  # the upstream's last own reply
        self.tried: list[dict[str, str]] = []  # each upstream left, and why
        self.aborted = False  # the failure is our decision, not the upstream's
        self.dot_sent = False  # the final dot went out (its reply may not have come)
        self._smtputf8 = False  # MAIL carried SMTPUTF8
        self._done = False  # the session went back to its pool
        self._mailed = False  # MAIL went out on the session (it counts against its limit)
        self._closing = False  # the upstream said 421: the session is not handed on
        self._busy = False  # a command of ours waits for its reply
        self._in_data = False  # DATA was answered 354: only the body and the dot may follow
        self._with_data = False  # DATA goes in MAIL's flight (queue delivery, PIPELINING)
        self._data_answer: Reply | None = None  # DATA's reply from that flight, for `data`
        self.retried: dict[
            str, Any
        ] = {}  # MAIL retried on a fresh connection: why, what it learned
        self._bug: Exception | None = None  # our own error while writing the body (relay)
        self._throttle = Throttle()  # the app's producer, paused by the upstream's send buffer
        self.pacer = Pacer(budgets, sender, clock)  # provider budgets and throttling replies

    @property
    def upstream(self) -> UpstreamConfig | None:
        """The upstream in use (or, before one was chosen, the first configured of the route)."""
        if self.pool is not None:
            return self.pool.config
        first = next((p for p in map(self.pools, self.route) if p is not None), None)
        return first.config if first is not None else None

    # --- MAIL and the first recipients ---------------------------------------------------

    async def open(
        self,
        recipients: Sequence[str],
        before_mail: Callable[[], None] | None = None,
        *,
        data: bool = False,
    ) -> list[Reply]:
        """Take a session along the route and send MAIL and `recipients`: a reply for each.

        `before_mail` runs once a session is in hand, before anything is sent on it (the queue
        marks its duplicate window there); if it raises, the session goes back unused.
        `data`: every recipient is known (queue delivery), so DATA goes in the same write
        where the upstream offers PIPELINING; `data()` then gives its reply. When no recipient
        was accepted, DATA's reply (a 503, or a 354 ended with the lone dot) is nobody's result.
        When `failure` is set afterwards, every recipient the upstream did not answer has
        `failure.reply`.
        """
        self._with_data = data
        recipients = list(recipients)
        answers: list[Reply | None] = [envelope.unsendable(r) for r in recipients]
        if (bad := envelope.unsendable(self.sender)) is not None:
            self.failure = UpstreamFailure(bad, "the sender contains control characters")
        elif any(a is None for a in answers):
            await self._failover(recipients, answers, before_mail)
        return [a if a is not None else self._refusal() for a in answers]

    async def _failover(
        self,
        recipients: list[str],
        answers: list[Reply | None],
        before_mail: Callable[[], None] | None,
    ) -> None:
        order = self.cooldowns.order(self.route, self.clock.seconds())
        last: UpstreamFailure | None = None
        for index, name in enumerate(order):
            if self.failure is not None:  # aborted while a session was being opened
                return
            pool = self.pools(name)
            if pool is None:
                self.tried.append({"upstream": name, "reason": "not configured"})
                continue
            todo = [i for i, a in enumerate(answers) if a is None]
            spent = await self.pacer.spend(pool.config, len(todo))
            if spent is not None:  # this sender's budget there is spent: the next upstream
                self.tried.append({"upstream": name, "reason": spent.describe()})
                last = UpstreamFailure(budget_reply(spent), f"{name}: {spent.describe()}")
                continue
            outcome = await self._upstream(pool, recipients, answers, before_mail)
            if outcome is None:  # the budget keeps only what the upstream accepted
                self.pacer.answered(
                    pool.config, [answers[i] for i in todo], self.failure is not None
                )
                return
            self.pacer.refund(pool.config)  # no session, or MAIL refused: nothing was counted
            if isinstance(outcome, UpstreamFailure):  # no session from this upstream
                last = outcome
                if final(outcome):
                    break
                continue
            said = self.upstream_reply or outcome  # what the upstream answered, as it said it
            if outcome.is_transient and index < len(order) - 1:
                self.tried.append({"upstream": name, "reason": f"MAIL answered {said.codes}"})
                last = UpstreamFailure(outcome, f"{name}: MAIL refused", said)
                self.release(reusable(said, outcome))  # kept (RSET at its next use) unless 421
                self.pool = self.session = None
                continue
            self._fail(
                UpstreamFailure(outcome, f"{name}: MAIL refused", said), reusable(said, outcome)
            )
            return
        if self.failure is None:
            self.failure = last or UpstreamFailure(
                replies.UPSTREAM_UNREACHABLE, "no upstream of the route is configured"
            )
            if self.failure.upstream_reply is not None:
                self.upstream_reply = self.failure.upstream_reply

    async def _upstream(
        self,
        pool: UpstreamPool,
        recipients: list[str],
        answers: list[Reply | None],
        before_mail: Callable[[], None] | None,
    ) -> Reply | UpstreamFailure | None:
        """One upstream: a session, MAIL and the RCPTs. MAIL refused (4xx, 421, lost) on a reused
        connection is tried once more on a fresh one (its per-connection limit, `classify`).

        Returns MAIL's refusal, the failure to get a session, or None (accepted, or `failure` set).
        """
        name, fresh, carried = pool.config.name, False, 0
        while True:
            try:
                session = await pool.acquire(self.sender, fresh=fresh)
            except UpstreamFailure as failure:
                if failure.at_auth and self.pacer.throttles(
                    pool.config, failure.upstream_reply, "SESSION"
                ):
                    pass  # the provider throttles this sender, not the upstream: no cool-down
                elif not isinstance(failure, PoolBusy):  # busy is not broken: no cool-down
                    self.cooldowns.failed(name, self.clock.seconds(), pool.config.failover_cooldown)
                self.tried.append({"upstream": name, "reason": failure.reason})
                return failure
            self.cooldowns.succeeded(name)
            if self.failure is not None:
                pool.release(session, reusable=True, mailed=False)
                return None
            if before_mail is not None:
                try:
                    before_mail()
                except BaseException:
                    pool.release(session, reusable=True, mailed=False)
                    raise
            self.pool, self.session, self._done = pool, session, False
            self._mailed = self._closing = False
            if not fresh:
                carried = pool.carried(session)
            outcome = await self._mail(session, recipients, answers)
            if isinstance(outcome, Stale):  # its pool's RSET failed: the next session, as the
                self.pool = self.session = None  # pool's own RSET check would have given
                if self.failure is not None:  # aborted meanwhile
                    return None
                continue
            said = None if isinstance(outcome, UpstreamFailure) else self.upstream_reply
            if fresh:  # MAIL went through on the fresh connection: the pool learns the limit
                if outcome is None and self._mailed and self.failure is None:
                    pool.learn_limit(carried)
                    self.retried["learned_limit"] = carried
                else:  # refused there too: not the connection's limit
                    pool.retry_fruitless()
            elif outcome is not None and carried and pool.may_retry():
                if verdict(said, "MAIL", reused=True) is Verdict.CONNECTION_LIMIT:
                    self.retried = {"carried": carried, "reply": str(said) if said else "lost"}
                    self.release(reusable=said is not None and said.code != 421, spent=True)
                    self.pool = self.session = None
                    fresh = True
                    continue
            if isinstance(outcome, UpstreamFailure):
                self._fail(outcome)
                return None
            return outcome

    async def _mail(
        self, session: UpstreamSession, recipients: list[str], answers: list[Reply | None]
    ) -> Reply | UpstreamFailure | Stale | None:
        """MAIL and the RCPTs not answered yet (pipelined where offered); fills `answers`.

        With PIPELINING the pool's RSET (when due) goes first in the same write, and DATA
        last when `open` was asked for it (`gateway.outbound.flight`).
        Returns MAIL's refusal, the connection's loss before MAIL's reply (not yet recorded),
        `STALE` (the pool's RSET failed: that session is closed, the caller asks for another),
        or None (accepted, or `failure` set).
        """
        capabilities = session.capabilities
        name = session.config.name
        if self.body == "8BITMIME" and "8BITMIME" not in capabilities:
            self._fail(
                UpstreamFailure(replies.UPSTREAM_NO_8BIT, f"{name}: 8BITMIME not offered"), True
            )
            return None
        if (bad := envelope.refusal(self.sender, capabilities)) is not None:
            self._fail(UpstreamFailure(bad, f"{name}: SMTPUTF8 not offered for the sender"), True)
            return None
        todo = [i for i, a in enumerate(answers) if a is None]
        for i in todo:
            answers[i] = envelope.refusal(recipients[i], capabilities)
        todo = [i for i in todo if answers[i] is None]
        if not todo:  # nothing this upstream can take: its session goes back unused
            self.release(reusable=True)
            self.pool = self.session = None
            return None
        self._smtputf8 = envelope.needs_smtputf8([self.sender, *(recipients[i] for i in todo)])
        line = envelope.mail_line(
            self.sender, capabilities, size=self.size, body=self.body, smtputf8=self._smtputf8
        )
        lines = [envelope.rcpt_line(recipients[i], smtputf8=self._smtputf8) for i in todo]
        self._mailed = self._busy = True
        flight = Flight(session, reset=session.reset_due, data=self._with_data)
        session.reset_due = False
        try:
            flight.send(line, lines)
            assert flight.mail is not None
            if flight.reset is not None and not await flight.reset_ok():
                # The pool's RSET failed: MAIL, RCPTs and DATA are answered in step and
                # recorded nowhere; the session is closed and another one asked for.
                usable = await flight.settle([flight.mail, *flight.rcpts], accepted=True)
                assert self.pool is not None
                self.pool.stale(session, usable=usable)
                self._done = True
                return STALE
            try:
                answer = await flight.mail
            except UpstreamFailure as failure:  # lost before MAIL's reply: the caller decides
                flight.forget()
                return failure
            self.upstream_reply = answer  # as the upstream said it, even when it made no sense
            reply = self.pacer.check(session.config, answer, "MAIL") or expected(answer, 250)
            if reply.code != 250:  # the RCPTs' and DATA's 503s mean nothing: kept in step
                if not await flight.settle(flight.rcpts, accepted=False):
                    self._closing = True
                return reply
            taken = False  # the upstream said yes (2xx, 3xx) to a RCPT, whatever we made of it
            for step, i in enumerate(todo):
                answer = await flight.rcpt(step)
                self.upstream_reply = answer
                self._closing = self._closing or answer.code == 421
                taken = taken or answer.is_positive
                answers[i] = self.pacer.check(session.config, answer, "RCPT") or expected(
                    answer, 250, 251
                )
            if flight.data is not None:
                if any(answers[i].is_positive for i in todo):  # type: ignore[union-attr]
                    answer = await flight.data  # `data` reads it
                    self._data_answer, self._in_data = answer, answer.code == 354
                elif not await flight.settle([], accepted=taken):  # DATA's 503: nobody's result
                    self._closing = True
        except BaseException as error:
            flight.forget()  # the same loss (or bug), handled here
            if not isinstance(error, UpstreamFailure):
                self._closing = True  # our bug: replies may still be due, never handed on
                raise
            self._fail(error)
        finally:
            self._busy = False
        return None

    def _refusal(self) -> Reply:
        return self.failure.reply if self.failure is not None else replies.UPSTREAM_LOST

    def _fail(self, failure: UpstreamFailure, reusable: bool = False) -> None:
        """The transaction cannot go on; an abort already recorded keeps its reason."""
        if not self.aborted:
            self.failure = failure
            if failure.upstream_reply is not None:
                self.upstream_reply = failure.upstream_reply
        self._give_back()
        self.release(reusable)

    def _give_back(self) -> None:
        """The message ends before its final dot went out: the provider counted none of it, so
        the budget taken at this upstream comes back (once; after the dot it is kept)."""
        if self.pool is not None and not self.dot_sent:
            self.pacer.refund(self.pool.config)

    # --- more recipients, DATA, the body and the final dot -------------------------------

    async def rcpt(self, recipient: str) -> Reply:
        """One more recipient (cut-through: the first one opens the transaction)."""
        if self.failure is not None:
            return self.failure.reply
        if self.session is None:
            return (await self.open([recipient]))[0]
        refused = envelope.refusal(recipient, self.session.capabilities)
        if refused is None and not recipient.isascii() and not self._smtputf8:
            refused = replies.UPSTREAM_NO_SMTPUTF8  # MAIL went without SMTPUTF8
        if refused is not None:
            return refused
        config = self.session.config
        if (spent := await self.pacer.more(config)) is not None:
            return budget_reply(spent)
        self._busy = True
        try:
            answer = await self.session.command(
                envelope.rcpt_line(recipient, smtputf8=self._smtputf8)
            )
        except UpstreamFailure as failure:
            self._fail(failure)
            self.pacer.refund(config)  # the transaction ends here, before the data
            return self._refusal()
        finally:
            self._busy = False
        self.upstream_reply = answer  # as the upstream said it, even when it made no sense
        self._closing = self._closing or answer.code == 421
        reply = self.pacer.check(config, answer, "RCPT") or expected(answer, 250, 251)
        if not reply.is_positive:
            self.pacer.refused(config, 1)
        return reply

    async def data(self) -> Reply:
        """DATA: the upstream's 354, or its refusal (the session then goes back to its pool)."""
        if self.failure is not None or self.session is None:
            return self._refusal()
        answer, self._data_answer = self._data_answer, None
        if answer is None:  # not in MAIL's flight: sent now
            self._busy = True
            try:
                answer = await self.session.command(b"DATA")
            except UpstreamFailure as failure:
                self._fail(failure)
                return self._refusal()
            finally:
                self._busy = False
        self.upstream_reply = answer
        if answer.code == 354:
            self._in_data = True
            return answer
        reply = self.pacer.check(self.session.config, answer, "DATA") or expected(answer, 354)
        self._give_back()
        self.release(reusable(answer, reply))
        return reply

    def write(self, content: bytes) -> None:
        """Body bytes (unstuffed CRLF lines), pushed as they come (relay).

        Never raises: it runs inside the app connection's byte handler, where an exception
        would drop the app without a reply. Our own error is kept and raised at `end`.
        """
        if self.session is not None and self.failure is None and self._bug is None:
            try:
                self.session.write(dot_stuff(content))
            except Exception as exc:  # noqa: BLE001 - our bug: raised again at the final dot
                self._bug = exc
                self.release(reusable=False)

    async def send_body(self, regions: Iterator[bytes]) -> None:
        """The whole body from `regions` (whole-line pieces), pulled by the upstream's transport
        (bounded memory), within the upstream's ``data_timeout``; `failure` is set if it broke."""
        if self.session is None or self.failure is not None:
            return
        try:
            await pull(self.session, regions, self.clock)
        except UpstreamFailure as failure:
            self._fail(failure)

    async def end(self) -> Reply:
        """The final dot: the upstream's reply to the message."""
        if self._bug is not None:
            raise self._bug
        if self.failure is not None or self.session is None:
            return self._refusal()
        self.dot_sent = True
        try:
            answer = await self.session.end_data()
        except UpstreamFailure as failure:
            self._fail(failure)
            return self._refusal()
        self.upstream_reply = answer
        config = self.session.config
        reply = self.pacer.check(config, answer, "DOT") or expected(answer, *range(200, 300))
        if reply.is_positive:
            self.pacer.delivered(config)
        elif not answer.is_positive:  # refused in its own words: the provider took nothing
            self.pacer.refund(config)
        self.release(reusable(answer, reply))
        return reply

    # --- flow control, giving up, the session's return --------------------------------------

    def throttle(self, producer: Any) -> None:
        """Let the upstream's send buffer pause `producer` (the app's side) while the body streams."""
        if self.session is not None and not self._done:
            self._throttle.start(self.session.transport, producer)

    def unthrottle(self) -> None:
        """Undo `throttle` before any close (or the upstream would stop the app's connection)."""
        self._throttle.stop()

    def abort(self, reason: str, reply: Reply = replies.UPSTREAM_LOST) -> None:
        """Give up (our decision): without the final dot nothing is delivered.

        Between commands and before DATA (every recipient refused, the app sent RSET) the
        session goes back to its pool; mid-command or mid-body it is dropped.
        """
        if self.failure is None:
            self.failure = UpstreamFailure(reply, reason)
            self.aborted = True
        self._give_back()
        self.release(reusable=not self._busy and not self._in_data)

    def release(self, reusable: bool, *, spent: bool = False) -> None:
        """Hand the session back to its pool (once): kept for the next message, or closed
        (with QUIT when `spent`: reusable, but at its per-connection limit)."""
        if self.session is not None and self.pool is not None and not self._done:
            self._done = True
            self.unthrottle()
            self.pool.release(
                self.session, reusable and not self._closing, mailed=self._mailed, spent=spent
            )

    # --- the record -------------------------------------------------------------------------

    def audit_fields(self) -> dict[str, Any]:
        """The upstream, its TLS session, who we were there and its own words, for the audit."""
        return record.upstream_fields(self)
