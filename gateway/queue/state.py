"""What the queue reports to the metrics scrape. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueState:
    """What a queue probe reports: messages waiting and the age of the oldest (0 when empty)."""

    depth: int
    oldest_age_seconds: float
