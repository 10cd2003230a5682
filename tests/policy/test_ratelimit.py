"""share(): one instance's part of a rule rate while the instances cannot ask Redis."""

from __future__ import annotations

import pytest

from gateway.config.model import Rate
from gateway.policy.ratelimit import TokenBucket, share

HUNDRED = Rate(100, 60.0, "100/minute")


def test_one_instance_keeps_the_whole_rate():
    """Alone, an instance's share is the rate itself."""
    assert share(HUNDRED, 1) is HUNDRED


@pytest.mark.parametrize("instances", [2, 3, 7, 100])
def test_shares_together_never_exceed_the_rate(instances):
    """N shares together: a burst of at most the rate's count, a refill of at most its pace."""
    part = share(HUNDRED, instances)
    buckets = [TokenBucket(part, 0.0) for _ in range(instances)]
    burst = sum(bucket.take(0.0) for bucket in buckets for _ in range(200))
    assert burst <= 100
    assert part.count / part.seconds * instances <= 100 / 60.0


def test_share_below_one_message_stretches_the_period():
    """2/minute over 3 instances: 1 every 90 s each."""
    assert share(Rate(2, 60.0, "2/minute"), 3) == Rate(1, 90.0, "2/minute / 3 instances")
