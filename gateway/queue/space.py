"""``queue.min_free``: the free-space floor of the spool's file system. No reactor.

Below the floor, new queue-mode mail is refused with ``452 4.3.1`` (as Postfix's
``queue_minfree``) while delivery goes on, so the room left is the runner's: journal appends,
DSNs, and the audit log if it shares the disk. The free space is ``f_bavail × f_frsize`` of
``statvfs(queue.path)`` (what an unprivileged writer may use), looked at no more often than
every `TTL` seconds of the clock handed in (the reactor's), not once per message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from gateway.audit.events import Event
from gateway.audit.log import AuditLog

TTL = 1.0  # seconds a free-space figure is used before statvfs is asked again


def shown(size: int) -> str:
    """A byte count for people: ``512 B``, ``12.5 MiB``, ``3.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


class FreeSpace:
    """The spool's free space, cached for `ttl` seconds, and whether new mail fits above the floor."""

    def __init__(
        self,
        path: str,
        floor: int,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = TTL,
        measure: Callable[[str], int] = free_bytes,
    ) -> None:
        self.path = path
        self.floor = floor
        self.clock = clock
        self.ttl = ttl
        self.measure = measure
        self._free: int | None = None
        self._at: float | None = None
        self.low = False  # below the floor at the last `watch`

    def free(self) -> int | None:
        """The free bytes (at most `ttl` seconds old), or None when statvfs fails."""
        now = self.clock()
        if self._at is None or not 0 <= now - self._at < self.ttl:
            self._at = now
            try:
                self._free = self.measure(self.path)
            except OSError:
                self._free = None  # the write itself will say what is wrong (452 4.3.1)
        return self._free

    def refusal(self, size: int = 0) -> str | None:
        """Why a message of `size` bytes (``SIZE=``, else 0) is not taken now, or None when it is.

        With the floor at 0 nothing is refused here: only a failed write answers ``452 4.3.1``.
        """
        if self.floor <= 0:
            return None
        free = self.free()
        if free is None or free - size >= self.floor:
            return None
        what = f"{shown(free)} free" + (f", {shown(size)} announced (SIZE=)" if size else "")
        return (
            f"queue.min_free: {what} on the spool's file system ({self.path}), "
            f"below the floor of {shown(self.floor)}"
        )

    def watch(self, audit: AuditLog) -> None:
        """The runner's scan: log ``queue.space_low`` when the floor is crossed, and
        ``queue.space_restored`` when there is room again (once each way)."""
        reason = self.refusal()
        free = self.free()
        if (reason is not None) == self.low or free is None:
            return  # no change, or not measured now (statvfs failed): nothing to say
        self.low = reason is not None
        fields = {"path": self.path, "free_bytes": free, "min_free": self.floor}
        if reason is not None:
            audit.event(Event.QUEUE_SPACE_LOW, **fields, reason=reason)
        else:
            text = f"{shown(free)} free: queued mail is accepted again"
            audit.event(Event.QUEUE_SPACE_RESTORED, **fields, reason=text)
