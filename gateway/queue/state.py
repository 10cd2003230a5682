"""What the queue reports to the metrics scrape. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueState:
    """What a queue probe reports: messages waiting and the age of the oldest (0 when empty),
    messages held (``hold/``), and the spool's free bytes (None when statvfs failed)."""

    depth: int
    oldest_age_seconds: float
    held: int = 0
    free_bytes: int | None = None
