"""Cut-through relay of one mail transaction over a rule's route of upstreams.

The app's MAIL is held until its first recipient passes policy; then a
session is taken from the first usable upstream of the route (pooled, or
newly opened: TLS, verification, AUTH) and MAIL is sent. If the upstream
cannot be reached, fails TLS or answers 4xx before any recipient is accepted,
the next upstream of the route is tried (failover); a 5xx is final. Each RCPT
is then forwarded as it comes, so the upstream's verdict on a recipient
reaches the app at that RCPT. The body is streamed through, dot-stuffed, and
the reply after DATA is the upstream's. Nothing is answered 2xx that the
upstream did not accept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.config.model import UpstreamConfig
from gateway.outbound.failover import Cooldowns
from gateway.outbound.pool import PoolBusy, UpstreamPool
from gateway.outbound.upstream import UpstreamFailure, UpstreamSession
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.data import dot_stuff
from gateway.smtp.replies import Reply, expected


def reflect(reply: Reply) -> Reply:
    """The upstream's reply as the app should see it.

    Codes and enhanced codes are kept; a reply without an enhanced code gets the
    generic one of its class (the app was promised ENHANCEDSTATUSCODES; the audit
    keeps the upstream's reply as it was). A 421 (the *upstream* closing) becomes
    451, since the app's own connection stays open; nonsense becomes 451.
    """
    if reply.code == 421:
        return Reply(451, reply.enhanced or replies.default_enhanced(451), reply.text)
    if not 200 <= reply.code < 600:
        return replies.UPSTREAM_PROTOCOL
    return reply.with_default_enhanced()


class RelayTransaction:
    def __init__(
        self, pools: list[UpstreamPool], mail: MailFrom, cooldowns: Cooldowns, clock: Any
    ) -> None:
        self.pools = pools
        self.route = tuple(p.config.name for p in pools)
        self.mail = mail
        self.cooldowns = cooldowns
        self.clock = clock
        self.pool: UpstreamPool | None = None
        self.session: UpstreamSession | None = None
        self.failure: UpstreamFailure | None = None
        self.upstream_reply: Reply | None = None
        self.tried: list[dict[str, str]] = []  # each upstream left, and why
        self.aborted = False
        self._done = False
        self._producer: Any = None
        self._throttling: Any = None  # the upstream transport our producer is registered with

    @property
    def upstream(self) -> UpstreamConfig:
        """The upstream in use (or, before one was chosen, the first of the route)."""
        return (self.pool or self.pools[0]).config

    def rcpt(self, recipient: Address) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._rcpt(recipient))

    async def _rcpt(self, recipient: Address) -> Reply:
        if self.failure is not None:
            return self.failure.reply
        line = f"RCPT TO:{recipient.path()}".encode("ascii")
        try:
            if self.session is None:
                reply = await self._open(line)
                if self.failure is not None or reply is None:
                    return self.failure.reply if self.failure else replies.UPSTREAM_LOST
            else:
                reply = await self.session.command(line)
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = reply  # as the upstream said it, even when it made no sense
        return reflect(expected(reply, 250, 251))

    async def _open(self, rcpt_line: bytes) -> Reply | None:
        """Take a session and send MAIL (and, pipelined, the first RCPT), failing over along the route.

        Returns the first RCPT's reply, or None with `failure` set.
        """
        pools = {p.config.name: p for p in self.pools}
        order = self.cooldowns.order(self.route, self.clock.seconds())
        last: UpstreamFailure | None = None
        for name in order:
            pool = pools[name]
            try:
                session = await pool.acquire(self.mail.sender.text)
            except UpstreamFailure as failure:
                if not isinstance(failure, PoolBusy):  # busy is not broken: no cool-down
                    self.cooldowns.failed(name, self.clock.seconds(), pool.config.failover_cooldown)
                self.tried.append({"upstream": name, "reason": failure.reason})
                last = failure
                if (
                    failure.upstream_reply is not None
                    and failure.upstream_reply.is_permanent
                    and failure.reply.is_permanent
                ):
                    break
                continue
            self.cooldowns.succeeded(name)
            if self.failure is not None:  # the app left while the session was being opened
                pool.release(session, reusable=True)
                return None
            self.pool, self.session, self._done = pool, session, False
            reply, rcpt = await self._mail(session, rcpt_line)
            if reply is None:
                return rcpt
            said = self.upstream_reply or reply  # what the upstream answered, as it said it
            if reply.is_transient and name != order[-1]:
                self.tried.append({"upstream": name, "reason": f"MAIL answered {said.codes}"})
                self._release(reusable=False)
                self.pool = self.session = None
                continue
            self._fail(UpstreamFailure(reflect(reply), f"{name}: MAIL refused", said))
            return None
        self.failure = last or UpstreamFailure(
            replies.UPSTREAM_UNREACHABLE, "no upstream available"
        )
        if self.failure.upstream_reply is not None:
            self.upstream_reply = self.failure.upstream_reply
        return None

    async def _mail(
        self, session: UpstreamSession, rcpt_line: bytes
    ) -> tuple[Reply | None, Reply | None]:
        """Send MAIL, and the first RCPT pipelined where offered (RFC 2920).

        Returns (None, RCPT reply) when MAIL was accepted, (refusal, None) when it was
        not, and (None, None) with `failure` set when the session broke.
        """
        capabilities = session.capabilities
        if self.mail.body == "8BITMIME" and "8BITMIME" not in capabilities:
            self._fail(
                UpstreamFailure(
                    replies.UPSTREAM_NO_8BIT, f"{session.config.name}: 8BITMIME not offered"
                )
            )
            return None, None
        line = f"MAIL FROM:{self.mail.sender.path()}"
        if self.mail.size is not None and "SIZE" in capabilities:
            line += f" SIZE={self.mail.size}"
        if self.mail.body and "8BITMIME" in capabilities:
            line += f" BODY={self.mail.body}"
        rcpt_sent = None
        try:
            mail_sent = session.command(line.encode("ascii"))
            rcpt_sent = session.command(rcpt_line) if "PIPELINING" in capabilities else None
            answer = await mail_sent
            reply = expected(answer, 250)
            if reply.code != 250:
                if rcpt_sent is not None:
                    await rcpt_sent  # its 503 means nothing; keep the replies in step
                self.upstream_reply = answer
                return reply, None
            rcpt = await (rcpt_sent if rcpt_sent is not None else session.command(rcpt_line))
        except UpstreamFailure as failure:
            if rcpt_sent is not None:
                rcpt_sent.addErrback(lambda _: None)  # the same loss, already handled
            self._fail(failure)
            return None, None
        return None, rcpt

    def _fail(self, failure: UpstreamFailure) -> None:
        self.failure = failure
        if failure.upstream_reply is not None:
            self.upstream_reply = failure.upstream_reply
        self._release(reusable=False)

    def data(self) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._data())

    async def _data(self) -> Reply:
        if self.failure is not None or self.session is None:
            return self.failure.reply if self.failure else replies.UPSTREAM_LOST
        try:
            answer = await self.session.command(b"DATA")
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = answer
        if answer.code == 354:
            return replies.START_DATA
        reply = expected(answer, 354)
        self._release(reusable=reply is answer)
        return reflect(reply)

    def write(self, content: bytes) -> None:
        if self.session is not None and self.failure is None:
            self.session.write(dot_stuff(content))

    def finish(self) -> defer.Deferred[Reply]:
        return defer.Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> Reply:
        if self.failure is not None or self.session is None:
            return self.failure.reply if self.failure else replies.UPSTREAM_LOST
        try:
            answer = await self.session.end_data()
        except UpstreamFailure as failure:
            self._fail(failure)
            return failure.reply
        self.upstream_reply = answer
        reply = expected(answer, *range(200, 300))
        self._release(reusable=reply is answer and reply.code != 421)
        return reflect(reply)

    def throttle(self, producer: Any) -> None:
        """Let the upstream's send buffer pause `producer` (the app's side) while the body streams."""
        if self.session is not None and not self._done and self.session.transport is not None:
            self._producer = producer
            self._throttling = self.session.transport
            self._throttling.registerProducer(producer, True)

    def unthrottle(self) -> None:
        """Undo `throttle` before any close (or the upstream would stop the app's connection),
        and resume the app's side in case the upstream left it paused."""
        producer, self._producer = self._producer, None
        transport, self._throttling = self._throttling, None
        if producer is None:
            return
        if (
            transport is not None
        ):  # a TLS transport wraps the producer, so compare nothing: it is ours
            try:
                transport.unregisterProducer()
            except (AttributeError, RuntimeError):
                pass  # the upstream connection is already gone (a closed TLS layer cannot unregister)
        producer.resumeProducing()

    def abort(self, reason: str) -> None:
        """Drop the upstream mid-transaction: without the final dot nothing is delivered."""
        if self.failure is None:
            self.failure = UpstreamFailure(replies.UPSTREAM_LOST, reason)
            self.aborted = (
                True  # our decision (a refused body, the app left), not the upstream's error
            )
        self._release(reusable=False)

    def _release(self, reusable: bool) -> None:
        if self.session is not None and self.pool is not None and not self._done:
            self._done = True
            self.unthrottle()
            self.pool.release(self.session, reusable)
