"""Upstream connection pool: reuse verified, authenticated sessions across messages.

One pool per upstream. `acquire()` hands out an idle session after a ``RSET``
health check, or opens a new one while fewer than ``max_connections`` are
open, or waits (FIFO) for one to be released. `release()` returns a session
after a completed transaction; it is closed instead when it has carried
``pool_max_messages`` messages or sat idle for ``pool_idle_timeout`` seconds.
A session that broke (timeout, lost connection, aborted body) is never reused.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer

from gateway.outbound.connector import UpstreamConnector, UpstreamSession
from gateway.outbound.failure import UpstreamFailure
from gateway.smtp.replies import POOL_BUSY


class PoolBusy(UpstreamFailure):
    """Every connection to the upstream stayed busy: the upstream itself did not fail."""


class _Idle:
    __slots__ = ("session", "timer")

    def __init__(self, session: UpstreamSession, timer: Any) -> None:
        self.session = session
        self.timer = timer


class UpstreamPool:
    def __init__(self, connector: UpstreamConnector, clock: Any) -> None:
        self.connector = connector
        self.clock = clock
        self.config = connector.config
        self.retired = False  # a reload replaced it: sessions handed back are closed
        self._open: set[int] = set()  # ids of sessions counted against max_connections
        self._opening = 0
        self._idle: list[_Idle] = []
        self._waiters: deque[defer.Deferred[None]] = deque()
        self.messages: dict[int, int] = {}
        self.handshakes = 0

    @property
    def size(self) -> int:
        return len(self._open) + self._opening

    def acquire(self, sender: str | None = None) -> defer.Deferred[UpstreamSession]:
        """A session for a message from `sender` (which matters for username = "$sender")."""
        return defer.Deferred.fromCoroutine(self._acquire(sender))

    def _take_idle(self, user: str | None) -> _Idle | None:
        """The most recently used idle session authenticated as `user`."""
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].session.auth_user == user:
                return self._idle.pop(index)
        return None

    async def _acquire(self, sender: str | None = None) -> UpstreamSession:
        user = self.connector.user_for(sender)
        while True:
            while (idle := self._take_idle(user)) is not None:
                if idle.timer.active():
                    idle.timer.cancel()
                session = idle.session
                if session.protocol._lost_reason is not None:
                    continue
                try:
                    reply = await session.command(b"RSET", self.config.command_timeout)
                except UpstreamFailure:
                    continue
                if reply.code == 250:
                    return session
                self._close(session)
            if self.size < self.config.max_connections:
                return await self._new(sender)
            if self._idle:  # all idle sessions are another mailbox's: make room for ours
                stale = self._idle.pop(0)
                if stale.timer.active():
                    stale.timer.cancel()
                self._close(stale.session)
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            timer = self.clock.callLater(self.config.command_timeout, self._give_up, waiter)
            await waiter
            if timer.active():
                timer.cancel()

    def _give_up(self, waiter: defer.Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.errback(
                PoolBusy(
                    POOL_BUSY,
                    f"{self.config.name}: no free connection "
                    f"(max_connections = {self.config.max_connections})",
                )
            )

    async def _new(self, sender: str | None = None) -> UpstreamSession:
        self._opening += 1
        try:
            session = await self.connector.open(sender)
        except BaseException:
            self._opening -= 1
            self._wake()  # the slot is free again: a waiting transaction may try
            raise
        self._opening -= 1
        self.handshakes += 1
        key = id(session)
        self._open.add(key)
        self.messages[key] = 0
        session.protocol.closed.addCallback(lambda _: self._gone(session))
        return session

    def _gone(self, session: UpstreamSession) -> None:
        key = id(session)
        if key in self._open:
            self._open.discard(key)
            self.messages.pop(key, None)
            for idle in self._idle:
                if idle.session is session and idle.timer.active():
                    idle.timer.cancel()
            self._idle = [i for i in self._idle if i.session is not session]
            self._wake()

    def _wake(self) -> None:
        if (
            self._waiters
            and self.size < self.config.max_connections
            or self._waiters
            and self._idle
        ):
            self._waiters.popleft().callback(None)

    def release(self, session: UpstreamSession, reusable: bool) -> None:
        key = id(session)
        count = self.messages.get(key, 0) + 1
        self.messages[key] = count
        alive = session.protocol._lost_reason is None
        if (
            reusable
            and alive
            and not self.retired
            and count < self.config.pool_max_messages
            and self.config.pool_idle_timeout > 0
        ):
            timer = self.clock.callLater(self.config.pool_idle_timeout, self._expire, session)
            self._idle.append(_Idle(session, timer))
            self._wake()
        elif alive and reusable:
            self._close(session)
        else:
            session.abort()

    def _expire(self, session: UpstreamSession) -> None:
        self._idle = [i for i in self._idle if i.session is not session]
        self._close(session)

    def _close(self, session: UpstreamSession) -> defer.Deferred[None]:
        """QUIT and a graceful close; fires once the connection is gone (a few seconds at most)."""
        return session.quit()

    def retire(self) -> defer.Deferred[None]:
        """A reload replaced this pool: close its idle sessions now, and every session handed
        back later (with QUIT), so old and new pools together stay within max_connections.
        Fires once the idle ones are closed."""
        self.retired = True
        return self.close_idle()

    def close_idle(self) -> defer.Deferred[None]:
        """QUIT every idle session and close it gracefully (TLS close_notify).

        Fires once each has answered and closed, or was aborted for not closing within
        `QUIT_TIMEOUT`; never with an error.
        """
        idle, self._idle = self._idle, []
        closing = []
        for entry in idle:
            if entry.timer.active():
                entry.timer.cancel()
            closing.append(self._close(entry.session))
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)
