"""`MovableTimer`: one `DelayedCall` that times one thing after another, moved rather than remade.

A connection times many short steps (each command to an upstream, the idle wait between an
app's commands); creating and cancelling a `DelayedCall` per step is measurable in relay mode.
This keeps one: `arm` moves it (``reset`` when later; a new call when sooner, which costs less
than moving one up the reactor's heap), `disarm` only forgets what it was for, so an expiry
then does nothing, and `stop` really cancels it (the connection is gone). The clock is passed
in (IReactorTime): no reactor import, tested with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class MovableTimer:
    """Calls the armed action once its time is up, unless disarmed or re-armed before."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock  # IReactorTime
        self._call: Any = None  # the DelayedCall, kept between steps
        self._expired: Callable[[], None] | None = None  # what the armed step does

    @property
    def armed(self) -> bool:
        return self._expired is not None

    def arm(self, seconds: float, expired: Callable[[], None]) -> None:
        """Call `expired` in `seconds`, instead of whatever was armed."""
        self._expired = expired
        call = self._call
        if call is not None and call.active():
            if self.clock.seconds() + seconds >= call.getTime():
                call.reset(seconds)  # later: the reactor only notes it
                return
            call.cancel()  # sooner: a new call costs less than moving it up the heap
        self._call = self.clock.callLater(seconds, self._fire)

    def disarm(self) -> None:
        """Nothing is timed now (the call is kept, to be moved by the next `arm`)."""
        self._expired = None

    def stop(self) -> None:
        """The connection is gone or closing: no call left behind."""
        self._expired = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        expired, self._expired = self._expired, None
        if expired is not None:
            expired()
