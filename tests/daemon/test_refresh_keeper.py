"""RefreshKeeper: an unused refresh token is spent once a day, so it never expires unused."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task

from gateway.daemon.refresh_keeper import INTERVAL, RefreshKeeper


class Tokens:
    def __init__(self, grant: str) -> None:
        self.grant = grant
        self.asked: list[str] = []

    def token(self, user: str) -> defer.Deferred[None]:
        self.asked.append(user)
        return defer.fail(RuntimeError("endpoint down"))  # audited by the cache, not here


def connector(grant: str, username: str) -> SimpleNamespace:
    return SimpleNamespace(tokens=Tokens(grant), config=SimpleNamespace(username=username))


def test_refresh_token_upstreams_are_asked_once_a_day():
    """Only refresh_token grants with a fixed mailbox; nothing before the first day is over."""
    clock = task.Clock()
    kept = connector("refresh_token", "relay@corp.example")
    app_only = connector("client_credentials", "relay@corp.example")
    per_sender = connector("refresh_token", "$sender")
    keeper = RefreshKeeper(clock, lambda: [kept, app_only, per_sender])
    keeper.start()
    assert kept.tokens.asked == []
    clock.advance(INTERVAL)
    clock.advance(INTERVAL)
    assert kept.tokens.asked == ["relay@corp.example"] * 2
    assert app_only.tokens.asked == [] and per_sender.tokens.asked == []
    keeper.stop()
    clock.advance(INTERVAL)
    assert len(kept.tokens.asked) == 2
