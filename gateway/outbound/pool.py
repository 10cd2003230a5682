"""Upstream connection pool: reuse verified, authenticated sessions across messages.

One pool per upstream. `acquire()` hands out an idle session after a ``RSET``
health check (the one place a session's leftover transaction is cleared), or opens a
new one while fewer than ``max_connections`` are open, or waits (FIFO) for one to be
released; ``fresh=True`` never hands out an idle one. Where the upstream offers PIPELINING
the RSET is not waited for here: the session goes out with ``reset_due`` set and the
transaction sends RSET in one write with its MAIL (RFC 2920), no round trip of its own; an
RSET refused or lost there ends that session the same way (`UpstreamPool.stale`) and the
transaction asks again, as this loop would have. With ``max_connections_per_identity``
a sending identity (the AUTH user: each sender with ``username = "$sender"``) holding that
many sessions (open, opening or in use) waits for one of its own while other identities go
on; a wait longer than ``command_timeout`` is `PoolBusy` (``451 4.4.5``). `release()` returns a session
after a transaction, delivered or not; it is closed with QUIT instead when it has
carried its limit of messages or sat idle for ``pool_idle_timeout`` seconds. A session
that broke (timeout, lost connection, aborted body, 421) is dropped, never reused.

The limit is ``pool_max_messages``, or lower while the pool knows the upstream's own
per-connection limit: `learn_limit` (a MAIL refused on a reused connection went through
on a fresh one) holds for `LIMIT_TTL` seconds, so one stray 4xx never caps a pool for
good. `retry_fruitless` (the fresh connection was refused too: not a per-connection
limit) stops such retries for as long.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer

from gateway.config.providers import is_sender_placeholder
from gateway.outbound.connector import UpstreamConnector, UpstreamSession
from gateway.outbound.failure import UpstreamFailure
from gateway.smtp.replies import POOL_BUSY

LIMIT_TTL = 3600.0  # seconds a learned per-connection limit (or a fruitless retry) is kept


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
        self._waiters: deque[tuple[str | None, defer.Deferred[None]]] = deque()  # (user, wake)
        self._users: dict[int, str | None] = {}  # session id -> the identity it is counted for
        self._held: dict[str | None, int] = {}  # identity -> sessions open or opening
        self.messages: dict[int, int] = {}  # session id -> transactions that sent MAIL on it
        self.handshakes = 0
        self.learned: int | None = None  # the upstream's own messages-per-connection limit
        self._learned_until = 0.0
        self._no_retry_until = 0.0

    @property
    def size(self) -> int:
        return len(self._open) + self._opening

    @property
    def parallel(self) -> int:
        """Transactions that can hold a session at once: ``max_connections``, or fewer when every
        session authenticates as one identity (a fixed ``username``) with its own cap."""
        cap = self.config.max_connections_per_identity
        if cap is None or is_sender_placeholder(self.config.username):
            return self.config.max_connections
        return min(cap, self.config.max_connections)

    def held(self, user: str | None) -> int:
        """Sessions open or opening for the identity `user` (idle ones included)."""
        return self._held.get(user, 0)

    def _at_cap(self, user: str | None) -> bool:
        cap = self.config.max_connections_per_identity
        return cap is not None and self.held(user) >= cap

    def _count(self, user: str | None, change: int) -> None:
        held = self._held.get(user, 0) + change
        if held > 0:
            self._held[user] = held
        else:
            self._held.pop(user, None)

    def acquire(
        self, sender: str | None = None, *, fresh: bool = False
    ) -> defer.Deferred[UpstreamSession]:
        """A session for a message from `sender` (which matters for username = "$sender");
        `fresh`: a newly opened one, never an idle one."""
        return defer.Deferred.fromCoroutine(self._acquire(sender, fresh))

    # --- messages per connection -----------------------------------------------------------

    def carried(self, session: UpstreamSession) -> int:
        """How many transactions sent MAIL on `session` so far."""
        return self.messages.get(id(session), 0)

    @property
    def limit(self) -> int:
        """Messages a connection carries before it is closed with QUIT."""
        if self.learned is not None and self.clock.seconds() >= self._learned_until:
            self.learned = None  # expired: the next connection runs to pool_max_messages
        if self.learned is None:
            return self.config.pool_max_messages
        return max(1, min(self.learned, self.config.pool_max_messages))

    def learn_limit(self, carried: int) -> None:
        """The upstream refused MAIL on a connection after `carried` messages, and took it on a
        fresh one: close connections after that many, for `LIMIT_TTL` seconds."""
        self.learned = carried
        self._learned_until = self.clock.seconds() + LIMIT_TTL

    def may_retry(self) -> bool:
        """Whether a MAIL refused on a reused connection is worth a fresh connection now."""
        return self.clock.seconds() >= self._no_retry_until

    def retry_fruitless(self) -> None:
        """A fresh connection was refused the same way: it was not the connection's limit."""
        self._no_retry_until = self.clock.seconds() + LIMIT_TTL

    def _take_idle(self, user: str | None) -> _Idle | None:
        """The most recently used idle session authenticated as `user`."""
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].session.auth_user == user:
                return self._idle.pop(index)
        return None

    async def _acquire(self, sender: str | None = None, fresh: bool = False) -> UpstreamSession:
        user = self.connector.user_for(sender)
        while True:
            while not fresh and (idle := self._take_idle(user)) is not None:
                if idle.timer.active():
                    idle.timer.cancel()
                session = idle.session
                if session.protocol.ended:
                    continue
                if self.carried(session) >= self.limit:  # a limit learned while it sat idle
                    self._close(session)
                    continue
                if "PIPELINING" in session.capabilities:  # RSET goes in the next batch
                    session.reset_due = True
                    return session
                try:
                    reply = await session.command(b"RSET", self.config.command_timeout)
                except UpstreamFailure:
                    continue
                if reply.code == 250:
                    return session
                self._close(session)
            if self._at_cap(user):  # this identity's own limit: wait for one of its sessions
                if fresh and (own := self._take_oldest(user)) is not None:
                    self._close(own.session)  # make room for the fresh one
                await self._wait(user)
                continue
            if self.size < self.config.max_connections:
                return await self._new(sender, user)
            if self._idle:  # all idle sessions are another mailbox's (or fresh): make room
                stale = self._idle.pop(0)
                if stale.timer.active():
                    stale.timer.cancel()
                self._close(stale.session)
            await self._wait(user)

    def _take_oldest(self, user: str | None) -> _Idle | None:
        for index, idle in enumerate(self._idle):
            if idle.session.auth_user == user:
                if idle.timer.active():
                    idle.timer.cancel()
                return self._idle.pop(index)
        return None

    async def _wait(self, user: str | None) -> None:
        """Until `_wake` picks this transaction (FIFO among those that can go on), or
        `command_timeout` passes (`PoolBusy`)."""
        waiter: defer.Deferred[None] = defer.Deferred()
        entry = (user, waiter)
        self._waiters.append(entry)
        timer = self.clock.callLater(self.config.command_timeout, self._give_up, entry)
        try:
            await waiter
        finally:
            if timer.active():
                timer.cancel()

    def _give_up(self, entry: tuple[str | None, defer.Deferred[None]]) -> None:
        if entry in self._waiters:
            self._waiters.remove(entry)
            user, waiter = entry
            limit = (
                f"max_connections_per_identity = {self.config.max_connections_per_identity}"
                if self._at_cap(user)
                else f"max_connections = {self.config.max_connections}"
            )
            waiter.errback(PoolBusy(POOL_BUSY, f"{self.config.name}: no free connection ({limit})"))

    async def _new(self, sender: str | None, user: str | None) -> UpstreamSession:
        self._opening += 1
        self._count(user, 1)
        try:
            session = await self.connector.open(sender)
        except BaseException:
            self._opening -= 1
            self._count(user, -1)
            self._wake()  # the slot is free again: a waiting transaction may try
            raise
        self._opening -= 1
        self.handshakes += 1
        key = id(session)
        self._open.add(key)
        self._users[key] = user
        self.messages[key] = 0
        session.protocol.closed.addCallback(lambda _: self._gone(session))
        return session

    def _gone(self, session: UpstreamSession) -> None:
        key = id(session)
        if key in self._open:
            self._open.discard(key)
            self.messages.pop(key, None)
            self._count(self._users.pop(key, None), -1)
            for idle in self._idle:
                if idle.session is session and idle.timer.active():
                    idle.timer.cancel()
            self._idle = [i for i in self._idle if i.session is not session]
            self._wake()

    def _wake(self) -> None:
        """Wake the first waiting transaction that can go on: an idle session of its own
        identity, or room for one more (or an idle one of another identity to close)."""
        for entry in self._waiters:
            user, waiter = entry
            own_idle = any(i.session.auth_user == user for i in self._idle)
            room = self.size < self.config.max_connections or bool(self._idle)
            if own_idle or (room and not self._at_cap(user)):
                self._waiters.remove(entry)
                waiter.callback(None)
                return

    def release(
        self, session: UpstreamSession, reusable: bool, *, mailed: bool = True, spent: bool = False
    ) -> None:
        """Take `session` back after a transaction.

        `reusable`: between transactions, and the upstream did not say it is closing;
        `mailed`: the transaction sent MAIL on it (counted against the limit);
        `spent`: reusable, but not for another message (its per-connection limit): QUIT.
        """
        key = id(session)
        count = self.messages.get(key, 0) + (1 if mailed else 0)
        if key in self._open:
            self.messages[key] = count
        alive = not session.protocol.ended
        if (
            reusable
            and alive
            and not spent
            and not self.retired
            and count < self.limit
            and self.config.pool_idle_timeout > 0
        ):
            timer = self.clock.callLater(self.config.pool_idle_timeout, self._expire, session)
            self._idle.append(_Idle(session, timer))
            self._wake()
        elif alive and reusable:
            self._close(session)
        else:
            session.abort()

    def stale(self, session: UpstreamSession, *, usable: bool = True) -> None:
        """A session handed out with `reset_due` failed its RSET (refused, 421 or lost): closed
        with QUIT, as the pool's own RSET check would, and never handed out again; reset
        instead when not `usable` (lost, 421, or left inside DATA, where a dot could deliver
        an empty message)."""
        session.reset_due = False
        if usable and not session.protocol.ended:
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
