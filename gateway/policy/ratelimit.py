"""Per-rule rate limits (``rate = "100/minute"``): token buckets, time passed in. Pure."""

from __future__ import annotations

from gateway.config.model import Rate


class TokenBucket:
    """Allows `rate.count` events per `rate.seconds`, refilling continuously; bursts up to count."""

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.count)
        self.updated = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.tokens = min(
            float(self.rate.count), self.tokens + elapsed * self.rate.count / self.rate.seconds
        )
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimits:
    """One bucket per rule name; a rule's bucket is replaced when its rate changes (reload)."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, rule: str, rate: Rate, now: float) -> bool:
        bucket = self._buckets.get(rule)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[rule] = TokenBucket(rate, now)
        return bucket.take(now)


def share(rate: Rate, instances: int) -> Rate:
    """One instance's part of `rate` when `instances` enforce it apart: together never more.

    ``100/minute`` over 3 is 33 a minute each; ``2/minute`` over 3 is 1 every 1.5 minutes each.
    """
    if instances <= 1:
        return rate
    text = f"{rate.text} / {instances} instances"
    if rate.count >= instances:
        return Rate(rate.count // instances, rate.seconds, text)
    return Rate(1, rate.seconds * instances / rate.count, text)
