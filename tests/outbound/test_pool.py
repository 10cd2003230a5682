"""gateway.outbound.pool, without sockets: what a retired pool does with sessions handed back."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.outbound.pool import LIMIT_TTL, PoolBusy, UpstreamPool
from tests.outbound.fakes import FakeSession, fired, upstreams


class Connector:
    """Opens FakeSessions and remembers them."""

    def __init__(self) -> None:
        self.config = upstreams("up", pool_idle_timeout=300)["up"]
        self.opened: list[FakeSession] = []
        self.quit: list[FakeSession] = []

    def user_for(self, sender: str | None) -> str | None:
        return "relay@example.test"

    def open(self, sender: str | None = None, **_: Any) -> Any:
        session = FakeSession(self.config)
        session.quit = lambda: self._quit(session)  # type: ignore[method-assign]
        self.opened.append(session)
        return defer.succeed(session)

    def _quit(self, session: FakeSession) -> defer.Deferred[None]:
        self.quit.append(session)
        return defer.succeed(None)


def test_a_live_pool_keeps_a_session_handed_back():
    """Before a reload, a reusable session goes back to the idle list."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    session = fired(pool.acquire())
    pool.release(session, reusable=True)
    assert connector.quit == [] and pool._take_idle("relay@example.test") is not None


def test_a_retired_pool_closes_a_session_handed_back_after_the_reload():
    """A session busy during a reload is closed with QUIT when handed back, not kept idle."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    idle, busy = fired(pool.acquire()), fired(pool.acquire())
    pool.release(idle, reusable=True)
    pool.retire()
    assert connector.quit == [idle]  # the idle one at once
    pool.release(busy, reusable=True)
    assert connector.quit == [idle, busy] and pool._take_idle("relay@example.test") is None


def test_a_learned_limit_closes_a_connection_with_quit_when_it_is_reached():
    """Learned: 2 messages per connection; the second release says QUIT instead of keeping it."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    pool.learn_limit(2)
    session = fired(pool.acquire())
    pool.release(session, reusable=True)
    assert fired(pool.acquire()) is session
    pool.release(session, reusable=True)
    assert connector.quit == [session] and pool.carried(session) == 2


def test_a_learned_limit_expires():
    """After LIMIT_TTL seconds the pool forgets the limit: pool_max_messages holds again."""
    clock = task.Clock()
    pool = UpstreamPool(Connector(), clock)  # type: ignore[arg-type]
    pool.learn_limit(2)
    assert pool.limit == 2
    clock.advance(LIMIT_TTL)
    assert pool.limit == pool.config.pool_max_messages and pool.learned is None


def test_an_idle_session_past_a_limit_learned_meanwhile_is_closed_not_handed_out():
    """A session idle with 3 messages when the pool learns 2: QUIT, and a new one is opened."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    old = fired(pool.acquire())
    for _ in range(3):
        pool.release(old, reusable=True)
        assert fired(pool.acquire()) is old
    pool.release(old, reusable=True)
    pool.learn_limit(2)
    new = fired(pool.acquire())
    assert new is not old and connector.quit == [old]


def test_a_fresh_acquire_opens_a_new_connection_past_an_idle_one():
    """acquire(fresh=True) never hands out an idle session."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    idle = fired(pool.acquire())
    pool.release(idle, reusable=True)
    assert fired(pool.acquire(fresh=True)) is not idle and len(connector.opened) == 2


def test_a_spent_session_is_closed_with_quit():
    """Released as spent (its per-connection limit): QUIT, not kept, not dropped."""
    connector = Connector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    session = fired(pool.acquire())
    pool.release(session, reusable=True, spent=True)
    assert connector.quit == [session] and session.protocol.aborted is None


def test_a_transaction_that_sent_no_mail_does_not_count():
    """A session handed back unused (nothing it could take) carries no message more."""
    pool = UpstreamPool(Connector(), task.Clock())  # type: ignore[arg-type]
    session = fired(pool.acquire())
    pool.release(session, reusable=True, mailed=False)
    assert pool.carried(session) == 0


def test_a_fruitless_retry_stops_retries_for_a_while():
    """After retry_fruitless, may_retry is false until LIMIT_TTL has passed."""
    clock = task.Clock()
    pool = UpstreamPool(Connector(), clock)  # type: ignore[arg-type]
    assert pool.may_retry()
    pool.retry_fruitless()
    assert not pool.may_retry()
    clock.advance(LIMIT_TTL)
    assert pool.may_retry()


class SenderConnector(Connector):
    """username = "$sender": each sender authenticates as itself; at most 2 sessions each."""

    def __init__(self) -> None:
        super().__init__()
        self.config = upstreams(
            "up", pool_idle_timeout=300, max_connections_per_identity=2, command_timeout=30
        )["up"]

    def user_for(self, sender: str | None) -> str | None:
        return sender

    def open(self, sender: str | None = None, **_: Any) -> Any:
        session = FakeSession(self.config, auth_user=sender)
        session.quit = lambda: self._quit(session)  # type: ignore[method-assign]
        self.opened.append(session)
        return defer.succeed(session)


def test_an_identity_at_its_cap_waits_while_another_goes_on():
    """A third acquire for a@ waits; b@ still gets two sessions of its own."""
    pool = UpstreamPool(SenderConnector(), task.Clock())  # type: ignore[arg-type]
    a1, a2 = fired(pool.acquire("a@x.test")), fired(pool.acquire("a@x.test"))
    third = pool.acquire("a@x.test")
    b1, b2 = fired(pool.acquire("b@x.test")), fired(pool.acquire("b@x.test"))
    assert not third.called and pool.held("a@x.test") == 2 and pool.held("b@x.test") == 2
    assert {b1.auth_user, b2.auth_user} == {"b@x.test"}
    pool.release(b1, reusable=True)  # another identity's idle session does not wake a@
    assert not third.called
    pool.release(a1, reusable=True)
    assert fired(third) is a1 and a2 is not a1


def test_an_identity_waits_for_its_own_session_to_close():
    """A session of a@ that breaks frees a@'s slot: the waiting acquire opens a new one."""
    connector = SenderConnector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    a1, _ = fired(pool.acquire("a@x.test")), fired(pool.acquire("a@x.test"))
    third = pool.acquire("a@x.test")
    a1.protocol.closed.callback(None)  # the connection went away
    assert fired(third) is connector.opened[-1] and len(connector.opened) == 3


def test_an_identity_waiting_past_command_timeout_gets_pool_busy():
    """451 4.4.5 naming max_connections_per_identity, never the sender's address."""
    clock = task.Clock()
    pool = UpstreamPool(SenderConnector(), clock)  # type: ignore[arg-type]
    fired(pool.acquire("a@x.test")), fired(pool.acquire("a@x.test"))
    third = pool.acquire("a@x.test")
    clock.advance(30)
    failure = []
    third.addErrback(failure.append)
    error = failure[0].value
    assert isinstance(error, PoolBusy) and str(error.reply).startswith("451 4.4.5")
    assert "max_connections_per_identity = 2" in error.reason and "a@x.test" not in error.reason


def test_a_fresh_acquire_at_the_cap_closes_an_own_idle_session():
    """fresh=True with both of a@'s sessions idle-or-busy: its idle one is QUIT to make room."""
    connector = SenderConnector()
    pool = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    a1, a2 = fired(pool.acquire("a@x.test")), fired(pool.acquire("a@x.test"))
    pool.release(a1, reusable=True)
    fresh = pool.acquire("a@x.test", fresh=True)
    assert connector.quit == [a1]
    a1.protocol.closed.callback(None)
    assert fired(fresh) not in (a1, a2)
