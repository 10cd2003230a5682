"""gateway.outbound.pool, without sockets: what a retired pool does with sessions handed back."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.outbound.pool import UpstreamPool
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
