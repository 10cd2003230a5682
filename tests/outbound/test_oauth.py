"""gateway.oauth.TokenCache on a fake clock and a fake endpoint: no reactor, no sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.config.secrets import Secret
from gateway.outbound.grants import AccessToken, TokenError
from gateway.outbound.oauth import TokenCache


class FakeEndpoint:
    """Stands in for TokenEndpoint: each fetch is a Deferred the test fires."""

    name = "up"

    def __init__(self, clock: task.Clock, grant: str = "client_credentials") -> None:
        self.clock = clock
        self.pending: list[tuple[str, defer.Deferred[AccessToken]]] = []
        self.grant: Any = type("G", (), {"oauth": type("O", (), {"grant": grant})()})()

    def key(self, user: str) -> tuple[str, str, str, str]:
        return (
            "https://token.test/t",
            "client",
            "scope",
            user if self.grant.oauth.grant == "jwt_bearer" else "",
        )

    def fetch(self, user: str) -> defer.Deferred[AccessToken]:
        d: defer.Deferred[AccessToken] = defer.Deferred()
        self.pending.append((user, d))
        return d

    def issue(self, value: str, lifetime: float = 100) -> None:
        _, d = self.pending.pop(0)
        d.callback(AccessToken(Secret(value), self.clock.seconds() + lifetime, lifetime))


def results(d: defer.Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_concurrent_callers_share_one_fetch():
    """Fifty callers while a fetch is under way get its token; the endpoint is asked once."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    waiting = [results(cache.token(endpoint, "u@x")) for _ in range(50)]
    assert len(endpoint.pending) == 1 and not any(waiting)
    endpoint.issue("t1")
    assert {w[0].value.reveal() for w in waiting} == {"t1"}


def test_cached_token_is_reused_until_a_fifth_of_its_lifetime_is_left():
    """A 100 s token serves callers until 80 s have passed, then the next caller fetches."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    results(cache.token(endpoint, "u"))
    endpoint.issue("t1", lifetime=100)
    clock.advance(79.9)
    assert results(cache.token(endpoint, "u"))[0].value.reveal() == "t1" and endpoint.pending == []
    clock.advance(0.1)
    pending = results(cache.token(endpoint, "u"))
    assert pending == [] and len(endpoint.pending) == 1


def test_refresh_margin_is_at_most_five_minutes():
    """A one-hour token is refreshed five minutes before it expires, not twelve."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    results(cache.token(endpoint, "u"))
    endpoint.issue("t1", lifetime=3600)
    clock.advance(3299)
    assert results(cache.token(endpoint, "u")) and endpoint.pending == []
    clock.advance(1)
    assert results(cache.token(endpoint, "u")) == [] and len(endpoint.pending) == 1


def test_invalidate_drops_only_the_refused_token():
    """A refused token is forgotten; a refusal of an older token keeps the newer one."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    old = results(cache.token(endpoint, "u"))
    endpoint.issue("t1")
    assert cache.invalidate(endpoint, "u", old[0])
    new = results(cache.token(endpoint, "u"))
    endpoint.issue("t2")
    assert cache.invalidate(
        endpoint, "u", old[0]
    )  # a second session refused t1 too: t2 stays, retry
    assert results(cache.token(endpoint, "u"))[0] is new[0] and endpoint.pending == []


def test_failure_reaches_every_waiter_and_is_not_cached():
    """An endpoint failure fails every waiting caller; the next caller tries again."""
    clock = task.Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    cache = TokenCache(clock, on_event=lambda name, **fields: events.append((name, fields)))
    endpoint = FakeEndpoint(clock)
    waiting = [results(cache.token(endpoint, "u")) for _ in range(3)]
    endpoint.pending.pop(0)[1].errback(
        TokenError("token endpoint https://token.test/t answered HTTP 503")
    )
    assert all(w[0].check(TokenError) for w in waiting)
    assert events == [
        (
            "oauth.token_failed",
            {
                "upstream": "up",
                "token_url": "https://token.test/t",
                "client_id": "client",
                "grant": "client_credentials",
                "error": "token endpoint https://token.test/t answered HTTP 503",
                "error_code": "none",
            },
        )
    ]
    results(cache.token(endpoint, "u"))
    assert len(endpoint.pending) == 1


def test_delegated_tokens_are_cached_per_mailbox():
    """For jwt_bearer the subject is part of the key: two mailboxes, two tokens."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock, grant="jwt_bearer")
    results(cache.token(endpoint, "a@x"))
    results(cache.token(endpoint, "b@x"))
    assert [user for user, _ in endpoint.pending] == ["a@x", "b@x"]


def test_app_tokens_are_shared_by_mailboxes():
    """For client_credentials one token serves every mailbox."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    results(cache.token(endpoint, "a@x"))
    results(cache.token(endpoint, "b@x"))
    assert len(endpoint.pending) == 1


def test_issued_event_has_no_token():
    """The audit event for a new token names endpoint, client and lifetime, never the token."""
    clock = task.Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    cache = TokenCache(clock, on_event=lambda name, **fields: events.append((name, fields)))
    endpoint = FakeEndpoint(clock)
    results(cache.token(endpoint, "u"))
    endpoint.issue("secret-token-value", lifetime=3599)
    [(name, fields)] = events
    assert name == "oauth.token_issued" and fields["expires_in"] == 3599
    assert "secret-token-value" not in repr(fields)


def test_failed_early_refresh_falls_back_to_the_still_valid_token():
    """When the refresh ahead of expiry fails, callers get the current token until it expires."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    results(cache.token(endpoint, "u"))
    endpoint.issue("t1", lifetime=100)
    clock.advance(90)  # inside the refresh margin, before expiry
    during = results(cache.token(endpoint, "u"))
    endpoint.pending.pop(0)[1].errback(TokenError("token endpoint https://token.test/t: timed out"))
    assert during[0].value.reveal() == "t1"
    clock.advance(10)  # now expired: the failure reaches the caller
    after = results(cache.token(endpoint, "u"))
    endpoint.pending.pop(0)[1].errback(TokenError("token endpoint https://token.test/t: timed out"))
    assert after[0].check(TokenError)


def test_refused_tokens_force_at_most_one_fetch_per_interval():
    """A second refusal within 30 s keeps the token (no retry); after 30 s a refusal may force one again."""
    clock = task.Clock()
    cache, endpoint = TokenCache(clock), FakeEndpoint(clock)
    first = results(cache.token(endpoint, "u"))
    endpoint.issue("t1", lifetime=3600)
    assert cache.invalidate(endpoint, "u", first[0]) is True
    second = results(cache.token(endpoint, "u"))
    endpoint.issue("t2", lifetime=3600)
    clock.advance(29)
    assert cache.invalidate(endpoint, "u", second[0]) is False
    assert results(cache.token(endpoint, "u"))[0] is second[0] and endpoint.pending == []
    clock.advance(1)
    assert cache.invalidate(endpoint, "u", second[0]) is True
    results(cache.token(endpoint, "u"))
    assert len(endpoint.pending) == 1
