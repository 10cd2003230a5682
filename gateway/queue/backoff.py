"""Retry timing for queued recipients: exponential backoff, bounded by an age limit. Pure.

After the n-th failed attempt the next one is due ``min_backoff * 2**(n-1)``
seconds later, never more than ``max_backoff``; no attempt is scheduled past
``received + max_age`` (the last try happens at that moment), and a transient
failure at or after it is final. Time is always an argument, never read here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    min_backoff: float
    max_backoff: float
    max_age: float

    def delay(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (attempts >= 1)."""
        exponent = min(max(attempts, 1) - 1, 64)
        return float(min(self.max_backoff, self.min_backoff * 2**exponent))

    def expired(self, received: float, now: float) -> bool:
        """True when a message received at `received` may not be retried any more."""
        return now >= received + self.max_age

    def next_attempt(self, received: float, attempts: int, now: float) -> float | None:
        """When to try again after a transient failure, or None: the recipient has expired."""
        if self.expired(received, now):
            return None
        return min(now + self.delay(attempts), received + self.max_age)
