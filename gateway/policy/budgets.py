"""Provider budgets per sending identity: pace, recipients a day, throttling pauses. Pure.

An upstream's budget (``pace = "30/minute"``, ``max_recipients_per_day = 10000``, or a preset by
host) holds for each *sending identity*: the upstream's AUTH user, or each envelope sender when
``username = "$sender"``. Both limits are exact rolling windows (a provider counts the last
minute or the last 24 hours, not a calendar day): a message goes only when the window ending now
has room for it, so no window of the period ever holds more than the budget.

A throttling reply from the provider (`gateway.outbound.classify.throttling`) pauses the
identity with exponential backoff (`PAUSE_FIRST` doubling up to `PAUSE_MAX`); a message that
goes through ends the backoff.

`Ledger.take` decides one message (or, with ``messages=0``, more recipients of one), taking
its share of both windows only when both have room; otherwise it answers a `Spent` saying which
budget and when it frees. Paced messages are promised distinct slots (`Spent.until`), one
interval of the pace apart, so a backlog drains oldest first instead of racing for each slot;
`backlog` is how long the promised slots already reach. Time is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.config.model import Rate, UpstreamConfig
from gateway.config.providers import is_sender_placeholder

DAY = 86400.0
PAUSE_FIRST = 60.0  # seconds an identity waits after a first throttling reply
PAUSE_MAX = 3600.0  # the longest pause (a daily quota is waited out an hour at a time)


@dataclass(frozen=True)
class Spent:
    """An identity's budget on an upstream has no room now."""

    upstream: str
    budget: str  # "pace 30/minute", "max_recipients_per_day 10000", "throttled"
    until: float  # when the message may be tried again (a promised slot)

    @property
    def throttled(self) -> bool:
        return self.budget == "throttled"

    def describe(self) -> str:
        if self.throttled:
            return f"upstream {self.upstream} is throttling this sender"
        return f"upstream {self.upstream} budget {self.budget} spent for this sender"


def identity(upstream: UpstreamConfig, sender: str) -> str:
    """Who the provider counts: the AUTH user, each sender for "$sender", or the upstream."""
    if is_sender_placeholder(upstream.username):
        return sender.lower() or "<>"
    return upstream.username or ""


def has_budget(upstream: UpstreamConfig) -> bool:
    return upstream.pace is not None or upstream.max_recipients_per_day is not None


def describe(upstream: UpstreamConfig, sender: str) -> str:
    """An upstream's budget as `mailgate explain` shows it, for the identity `sender` sends as."""
    parts = []
    if upstream.pace is not None:
        parts.append(f"pace {upstream.pace.text}")
    if upstream.max_recipients_per_day is not None:
        parts.append(f"max_recipients_per_day {upstream.max_recipients_per_day}")
    if upstream.max_connections_per_identity is not None:
        parts.append(f"max_connections_per_identity {upstream.max_connections_per_identity}")
    parts.append(f"max_connections {upstream.max_connections}")
    who = identity(upstream, sender) or f"the upstream {upstream.name} (no AUTH user)"
    if not has_budget(upstream):
        return f"no provider budget ({parts[-1]}); throttling replies pause {who}"
    return f"budget {', '.join(parts)} for {who}"


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


@dataclass
class Pause:
    until: float = 0.0
    seconds: float = 0.0  # the last pause's length (0: not throttled since the last success)


class Account:
    """One identity's windows on one upstream (replaced when the upstream's budget changes)."""

    def __init__(self, pace: Rate | None, recipients: int | None) -> None:
        self.pace = pace
        self.recipients = recipients
        self.messages = Window(pace.count, pace.seconds) if pace else None
        self.rcpts = Window(recipients, DAY) if recipients else None
        self.pause = Pause()
        self.promised = 0.0  # the last slot promised to a paced message

    def matches(self, pace: Rate | None, recipients: int | None) -> bool:
        return self.pace == pace and self.recipients == recipients


PauseListener = Callable[[str, str, float, str], None]  # (upstream, identity, seconds, reply)


class Ledger:
    """Every identity's budget on every upstream, in this process."""

    def __init__(self, on_pause: PauseListener | None = None) -> None:
        self._accounts: dict[tuple[str, str], Account] = {}
        self.on_pause = on_pause
        self.pauses: dict[str, int] = {}  # upstream -> throttling pauses so far (metrics)
        self._takes = 0

    def prune(self, now: float) -> None:
        """Forget identities with nothing in their windows, no pause and no promise ("$sender"
        upstreams meet an unbounded number of senders)."""
        for key, acct in list(self._accounts.items()):
            if (
                acct.pause.until <= now
                and not acct.pause.seconds
                and acct.promised <= now
                and all(w is None or w.idle(now) for w in (acct.messages, acct.rcpts))
            ):
                del self._accounts[key]

    def account(self, upstream: UpstreamConfig, who: str) -> Account:
        key = (upstream.name, who)
        found = self._accounts.get(key)
        if found is None or not found.matches(upstream.pace, upstream.max_recipients_per_day):
            found = self._accounts[key] = Account(upstream.pace, upstream.max_recipients_per_day)
        return found

    def take(
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> Spent | None:
        """One message (`messages` 1) with `recipients`, or more recipients (`messages` 0)."""
        self._takes += 1
        if self._takes % 1000 == 0:
            self.prune(now)
        who = identity(upstream, sender)
        key = (upstream.name, who)
        if not has_budget(upstream) and key not in self._accounts:
            return None  # no budget and never throttled: nothing to keep
        acct = self.account(upstream, who)
        if acct.pause.until > now:
            return Spent(upstream.name, "throttled", self._promise(acct, acct.pause.until, now))
        spent: list[tuple[str, float]] = []
        if acct.messages is not None and messages and not acct.messages.room(messages, now):
            assert acct.pace is not None
            spent.append((f"pace {acct.pace.text}", acct.messages.free_at(messages, now)))
        if acct.rcpts is not None and recipients and not acct.rcpts.room(recipients, now):
            spent.append(
                (
                    f"max_recipients_per_day {acct.recipients}",
                    acct.rcpts.free_at(recipients, now),
                )
            )
        if spent:
            budget, free = max(spent, key=lambda s: s[1])
            return Spent(upstream.name, budget, self._promise(acct, free, now))
        if acct.messages is not None:
            acct.messages.add(messages, now)
        if acct.rcpts is not None:
            acct.rcpts.add(recipients, now)
        return None

    def count(
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> None:
        """Record a take decided elsewhere (Redis), for this instance's metrics."""
        acct = self.account(upstream, identity(upstream, sender))
        if acct.messages is not None:
            acct.messages.add(messages, now)
        if acct.rcpts is not None:
            acct.rcpts.add(recipients, now)

    def paused(self, upstream: UpstreamConfig, sender: str, now: float) -> Spent | None:
        """The identity's throttling pause, if it is on (the shared variant asks this first)."""
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        if acct is None or acct.pause.until <= now:
            return None
        return Spent(upstream.name, "throttled", self._promise(acct, acct.pause.until, now))

    def hold(self, upstream: UpstreamConfig, sender: str, until: float, now: float) -> Spent:
        """Another instance was told to slow down for this identity: the pause holds here too,
        until `until` (no ``upstream.throttled`` here: that instance wrote it)."""
        acct = self.account(upstream, identity(upstream, sender))
        if acct.pause.until < until:
            acct.pause = Pause(until, max(acct.pause.seconds, until - now))
            acct.promised = 0.0
        return Spent(upstream.name, "throttled", self._promise(acct, acct.pause.until, now))

    def promise(
        self, upstream: UpstreamConfig, sender: str, budget: str, free: float, now: float
    ) -> Spent:
        """A `Spent` for a budget found spent elsewhere (Redis), with this instance's slot."""
        acct = self.account(upstream, identity(upstream, sender))
        return Spent(upstream.name, budget, self._promise(acct, free, now))

    def _promise(self, acct: Account, free: float, now: float) -> float:
        """The next slot not yet promised, from `free` on (one pace interval apart)."""
        step = acct.pace.seconds / acct.pace.count if acct.pace else 1.0
        slot = free if acct.promised < free else acct.promised + step
        acct.promised = slot
        return slot

    def throttled(
        self, upstream: UpstreamConfig, sender: str, now: float, reply: str = ""
    ) -> float:
        """The provider said slow down: pause the identity; the pause's length in seconds."""
        who = identity(upstream, sender)
        acct = self.account(upstream, who)
        if acct.pause.until > now:
            return acct.pause.until - now  # one pause for the replies of sessions in flight
        seconds = min(PAUSE_MAX, acct.pause.seconds * 2) if acct.pause.seconds else PAUSE_FIRST
        acct.pause = Pause(now + seconds, seconds)
        acct.promised = 0.0
        self.pauses[upstream.name] = self.pauses.get(upstream.name, 0) + 1
        if self.on_pause is not None:
            self.on_pause(upstream.name, who, seconds, reply)
        return seconds

    def delivered(self, upstream: UpstreamConfig, sender: str) -> None:
        """A message went through: the identity's throttling backoff starts again from the first."""
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        if acct is not None and acct.pause.seconds:
            acct.pause = Pause()

    def backlog(self, upstream: UpstreamConfig, sender: str, now: float) -> float:
        """How far ahead (seconds) the slots promised to this identity's paced mail reach."""
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        return max(0.0, acct.promised - now) if acct is not None else 0.0

    def usage(self, now: float) -> Iterator[tuple[str, str, int, int]]:
        """(upstream, budget, used, remaining) for the metrics: the busiest identity of each."""
        best: dict[tuple[str, str], tuple[int, int]] = {}
        for (name, _), acct in self._accounts.items():
            for budget, window in (("pace", acct.messages), ("recipients_per_day", acct.rcpts)):
                if window is None:
                    continue
                used = window.used(now)
                key = (name, budget)
                if key not in best or used > best[key][0]:
                    best[key] = (used, max(0, window.limit - used))
        for (name, budget), (used, remaining) in sorted(best.items()):
            yield name, budget, used, remaining
