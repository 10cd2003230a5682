"""One flight of a transaction's opening commands: RSET, MAIL, the RCPTs and DATA (RFC 2920).

Where the upstream offers PIPELINING, `Flight` writes the pool's RSET (when due), MAIL, every
RCPT and (queue delivery: every recipient is known) DATA in one write, and hands out the
replies in order; without PIPELINING it sends MAIL alone and each RCPT when asked, after the
previous reply (DATA is then the transaction's own step). What the replies mean is the
transaction's (`gateway.outbound.transaction`); this only keeps them in step.

`settle` takes the replies that no longer mean anything (after a refused RSET or MAIL, the
RCPTs' and DATA's 503s; after every recipient was refused, DATA's 503 or 554): they are never
anyone's result. A DATA answered 354 anyway is ended as RFC 2920 3.1 says, with a single
dot and no content, where no recipient can have been accepted; where one may have been (the
RSET before was refused, or an upstream took a RCPT without MAIL) the session is not ended
with a dot — a dot could deliver an empty message — but reset (`settle` says it is unusable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from twisted.internet import defer

from gateway.outbound.connector import UpstreamSession
from gateway.outbound.failure import UpstreamFailure
from gateway.smtp.replies import Reply


class Stale:
    """A session that failed its pool's RSET (refused, 421, lost): closed; the caller asks again."""


STALE = Stale()


class Flight:
    """The opening commands of one transaction on `session`, and their replies in order."""

    def __init__(
        self, session: UpstreamSession, *, reset: bool = False, data: bool = False
    ) -> None:
        self.session = session
        self.pipelined = "PIPELINING" in session.capabilities
        self._reset = reset and self.pipelined  # the pool sent its own RSET without PIPELINING
        self._data = data and self.pipelined  # without PIPELINING the caller sends DATA
        self._rcpt_lines: list[bytes] = []
        self.reset: defer.Deferred[Reply] | None = None
        self.mail: defer.Deferred[Reply] | None = None
        self.rcpts: list[defer.Deferred[Reply]] = []
        self.data: defer.Deferred[Reply] | None = None  # DATA's reply, when it went in the flight
        self._sent: list[defer.Deferred[Reply]] = []  # every reply due, for `forget`

    def send(self, mail: bytes, rcpts: Sequence[bytes]) -> None:
        """Write the flight: all in one write with PIPELINING, else MAIL alone."""
        self._rcpt_lines = list(rcpts)
        if not self.pipelined:
            self.mail = self._send(mail)
            return
        with self.session.batched():
            if self._reset:
                self.reset = self._send(b"RSET")
            self.mail = self._send(mail)
            self.rcpts = [self._send(line) for line in self._rcpt_lines]
            if self._data:
                self.data = self._send(b"DATA")

    def _send(self, line: bytes) -> defer.Deferred[Reply]:
        sent = self.session.command(line)
        self._sent.append(sent)
        return sent

    def rcpt(self, step: int) -> defer.Deferred[Reply]:
        """The reply to the `step`-th RCPT (without PIPELINING it is sent now)."""
        if self.pipelined:
            return self.rcpts[step]
        return self._send(self._rcpt_lines[step])

    async def reset_ok(self) -> bool:
        """Whether the pool's RSET was answered 250 (lost or refused: the session is stale)."""
        assert self.reset is not None
        try:
            reply = await self.reset
        except UpstreamFailure:
            return False
        return reply.code == 250

    def forget(self) -> None:
        """Every reply still due fails the same way (the loss, or our bug): the caller has it."""
        for sent in self._sent:
            sent.addErrback(lambda _: None)

    async def settle(self, due: Sequence[defer.Deferred[Reply]], *, accepted: bool) -> bool:
        """Take the replies `due` and DATA's, recorded nowhere, in step with the upstream.

        A 354 to DATA gets the lone dot unless a recipient may have been accepted (`accepted`,
        or a 2xx among `due`). Returns whether the session may be handed on: no 421, no loss,
        not left inside DATA.
        """
        usable = True
        for sent in due:
            try:
                reply = await sent
            except UpstreamFailure:  # a 421 and the close, or a loss: nothing more comes
                usable = False
                continue
            accepted = accepted or reply.is_positive
            usable = usable and reply.code != 421
        if self.data is None:
            return usable
        try:
            reply = await self.data
        except UpstreamFailure:
            return False
        if reply.code != 354:
            return usable and reply.code != 421
        if accepted:
            return False  # never a dot after a recipient may have been taken: reset, not sent
        with contextlib.suppress(UpstreamFailure):
            ended = await self.session.end_data()  # RFC 2920 3.1: the single dot
            return usable and ended.code != 421
        return False
