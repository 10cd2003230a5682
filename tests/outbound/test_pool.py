"""gateway.outbound.pool, without sockets: what a retired pool does with sessions handed back."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.outbound.pool import LIMIT_TTL, UpstreamPool
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
