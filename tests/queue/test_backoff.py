"""Retry timing: exponential between min_backoff and max_backoff, bounded by max_age."""

from gateway.queue.backoff import Backoff

BACKOFF = Backoff(min_backoff=300, max_backoff=4000, max_age=432000)


def test_delay_doubles_from_min_backoff():
    """The n-th failure waits min_backoff * 2**(n-1)."""
    assert [BACKOFF.delay(n) for n in (1, 2, 3, 4)] == [300, 600, 1200, 2400]


def test_delay_is_capped_at_max_backoff():
    """However many failures, the wait never exceeds max_backoff."""
    assert BACKOFF.delay(5) == 4000 and BACKOFF.delay(10_000) == 4000


def test_next_attempt_is_now_plus_delay():
    """Before max_age the next try is due one delay after now."""
    assert BACKOFF.next_attempt(received=1000, attempts=2, now=2000) == 2600


def test_last_attempt_is_at_max_age():
    """A delay reaching past max_age is cut to the deadline, so the last try happens at it."""
    assert BACKOFF.next_attempt(received=0, attempts=50, now=431000) == 432000


def test_expired_at_max_age():
    """At or after received + max_age there is no next attempt."""
    assert BACKOFF.next_attempt(received=0, attempts=3, now=432000) is None
    assert BACKOFF.expired(0, 431999.9) is False
