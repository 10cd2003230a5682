"""One sending identity's account on one upstream: exact rolling windows, its pause, the slots
promised to its paced mail. Pure (`gateway.policy.budgets` decides with them)."""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from gateway.config.model import Rate

DAY = 86400.0
PROMISE_GRACE = 60.0  # a promised slot whose message has not come back this long after is dropped


class Window:
    """Weighted events in the last `seconds`: an exact rolling count."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.seconds:
            self.total -= self.events.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total

    def room(self, weight: int, now: float) -> bool:
        return self.used(now) + weight <= self.limit or not self.events

    def free_at(self, weight: int, now: float) -> float:
        """When `weight` more fit (now if they do); a weight over the limit fits an empty window."""
        self._expire(now)
        if self.total + weight <= self.limit or not self.events:
            return now
        excess = self.total + weight - self.limit
        for when, count in self.events:
            excess -= count
            if excess <= 0:
                return when + self.seconds
        return self.events[-1][0] + self.seconds

    def idle(self, now: float) -> bool:
        return self.used(now) == 0

    def add(self, weight: int, now: float) -> None:
        if weight:
            self.events.append((now, weight))
            self.total += weight

    def remove(self, weight: int, when: float) -> None:
        """Give back `weight` added at `when` (a refund); nothing if it already left the window."""
        for index in range(len(self.events) - 1, -1, -1):
            at, count = self.events[index]
            if at < when:
                break
            if at > when:
                continue
            given = min(weight, count)
            if given == count:
                del self.events[index]
            else:
                self.events[index] = (at, count - given)
            self.total -= given
            weight -= given
            if not weight:
                break


def _relimit(window: Window | None, limit: int, seconds: float) -> Window:
    if window is None:
        return Window(limit, seconds)
    window.limit, window.seconds = limit, seconds
    return window


@dataclass
class Pause:
    until: float = 0.0
    seconds: float = 0.0  # the last pause's length (0: not throttled since the last success)


@dataclass
class Taken:
    """One take that a refund can give back: its name (the shared store's member), its time,
    and what of it is still taken."""

    ticket: str
    at: float
    messages: int
    recipients: int


class Account:
    """One identity's windows on one upstream (re-limited, events kept, when its budget changes)."""

    def __init__(self, pace: Rate | None, recipients: int | None) -> None:
        self.pace = pace
        self.recipients = recipients
        self.messages = Window(pace.count, pace.seconds) if pace else None
        self.rcpts = Window(recipients, DAY) if recipients else None
        self.pause = Pause()
        self.promised = 0.0  # the last slot promised to a paced message
        self.slots: list[float] = []  # the outstanding promised slots, earliest first
        # Slots given again to promised messages that found no room: (slot, its place in line,
        # the slot it was first promised); a later message in line does not pass one.
        self.again: list[tuple[float, float]] = []
        self.waits_for = ""  # the budget the last promise waits for

    def matches(self, pace: Rate | None, recipients: int | None) -> bool:
        return self.pace == pace and self.recipients == recipients

    def relimit(self, pace: Rate | None, recipients: int | None) -> None:
        """The budget changed (a reload, or this instance's share while Redis is away): the same
        events against the new limits."""
        self.pace, self.recipients = pace, recipients
        self.messages = _relimit(self.messages, pace.count, pace.seconds) if pace else None
        self.rcpts = _relimit(self.rcpts, recipients, DAY) if recipients else None

    def outstanding(self, now: float) -> list[float]:
        """The promised slots whose messages may still come back."""
        stale = bisect.bisect_left(self.slots, now - PROMISE_GRACE)
        if stale:
            del self.slots[:stale]
        if self.again:  # few: the messages given a slot again
            self.again = [(s, p) for s, p in self.again if s >= now - PROMISE_GRACE]
        return self.slots

    def redeem(self, slot: float) -> float | None:
        """A message came back for `slot`: its promise is no longer outstanding; its place in
        line (the slot it was first promised), or None if it was not promised here."""
        if slot not in self.slots:
            return None
        self.slots.remove(slot)
        mine = [entry for entry in self.again if entry[0] == slot]
        if not mine:
            return slot
        entry = min(mine, key=lambda e: e[1])
        self.again.remove(entry)
        return entry[1]

    def ahead(self, place: float, now: float) -> float | None:
        """The latest slot given again to a message earlier in line than `place`, if any (one
        whose message has not come back `PROMISE_GRACE` after it no longer counts)."""
        earlier = [slot for slot, p in self.again if p < place and slot >= now - PROMISE_GRACE]
        return max(earlier) if earlier else None
