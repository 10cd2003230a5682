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
budget and when it frees. `refund` gives a take back (its events leave the windows) when the
provider cannot have counted it.

Oldest first. A message kept back is promised a slot (`Spent.until`), one interval of the pace
after the last one promised, so a backlog drains in order instead of racing for each slot;
`backlog` is how far the promised slots reach. A promise stays *outstanding* until its message
comes back and names it (``promised=``, the slot it was given): a message back at or after its
slot goes ahead of every other promise; a fresh message (or one back early) is not let past an
outstanding promise — it is promised the next slot, behind the others — even when the window has
room, since that room is what the promised slots count on. A promise whose message has not come
back `PROMISE_GRACE` seconds after its slot is dropped (the message was deleted, or went another
way). A promised message that finds no room after all (another instance took it) is given the
time the window frees and keeps its place in line (`Spent.place`): a message later in line that
comes back first is held just after it. `take(..., promise=False)` answers the slot it
would promise without keeping it (relay mode, whose app retries on its own schedule; the queue
keeps the slot of the one budget that held the message back with `promise`).

A budget that a reload changes keeps its windows' events (`Account.relimit`): what was sent in
the window still counts against the new limit. Time is passed in.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.config.model import UpstreamConfig
from gateway.config.providers import is_sender_placeholder
from gateway.policy.accounts import DAY, PROMISE_GRACE, Account, Pause, Taken, Window

PAUSE_FIRST = 60.0  # seconds an identity waits after a first throttling reply
PAUSE_MAX = 3600.0  # the longest pause (a daily quota is waited out an hour at a time)
PRUNE_EVERY = 1000  # decisions between two prunings of the idle accounts
AFTER = 0.001  # a message held behind an earlier one given a slot again goes this much after it


@dataclass(frozen=True)
class Spent:
    """An identity's budget on an upstream has no room now."""

    upstream: str
    budget: str  # "pace 30/minute", "max_recipients_per_day 10000", "throttled"
    until: float  # when the message may be tried again (a promised slot)
    # A promised message that found no room: its place in line (the slot it was first promised),
    # kept with the slot it is given now, so that later messages do not pass it.
    place: float | None = None

    @property
    def first(self) -> bool:
        return self.place is not None

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


def _step(acct: Account) -> float:
    """The time between two promised slots: one interval of the pace (a second without one)."""
    return acct.pace.seconds / acct.pace.count if acct.pace else 1.0


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
        upstreams meet an unbounded number of senders). A pause that ended more than `PAUSE_MAX`
        ago counts as none: an identity throttled and never delivered again is forgotten too (its
        backoff, if it is throttled again, starts afresh from `PAUSE_FIRST`)."""
        for key, acct in list(self._accounts.items()):
            if (
                acct.pause.until <= now
                and (not acct.pause.seconds or acct.pause.until <= now - PAUSE_MAX)
                and acct.promised <= now
                and not acct.outstanding(now)
                and all(w is None or w.idle(now) for w in (acct.messages, acct.rcpts))
            ):
                del self._accounts[key]

    def __len__(self) -> int:
        """The accounts kept (identities on upstreams)."""
        return len(self._accounts)

    def _tick(self, now: float) -> None:
        """Every decision passes here (`before`, from `take` and from the shared variant's take):
        every `PRUNE_EVERY` of them, idle accounts are pruned."""
        self._takes += 1
        if self._takes % PRUNE_EVERY == 0:
            self.prune(now)

    def account(self, upstream: UpstreamConfig, who: str) -> Account:
        key = (upstream.name, who)
        found = self._accounts.get(key)
        if found is None:
            found = self._accounts[key] = Account(upstream.pace, upstream.max_recipients_per_day)
        elif not found.matches(upstream.pace, upstream.max_recipients_per_day):
            found.relimit(upstream.pace, upstream.max_recipients_per_day)
        return found

    def take(
        self,
        upstream: UpstreamConfig,
        sender: str,
        messages: int,
        recipients: int,
        now: float,
        *,
        promise: bool = True,
        promised: float | None = None,
        ticket: str | None = None,
    ) -> Spent | None:
        """One message (`messages` 1) with `recipients`, or more recipients (`messages` 0).

        `promised`: the slot the message was promised when it was kept back before (see the
        module's "Oldest first"); `promise=False`: answer the slot without keeping it.
        `ticket` names the take for the shared variant; here a refund finds it by its time."""
        del ticket
        early, place = self.before(
            upstream, sender, messages, now, promise=promise, promised=promised
        )
        if early is not None:
            return early
        if not has_budget(upstream) and (upstream.name, identity(upstream, sender)) not in (
            self._accounts
        ):
            return None  # no budget and never throttled: nothing to keep
        return self.spend(upstream, sender, messages, recipients, now, promise=promise, place=place)

    def before(
        self,
        upstream: UpstreamConfig,
        sender: str,
        messages: int,
        now: float,
        *,
        promise: bool = True,
        promised: float | None = None,
    ) -> tuple[Spent | None, float | None]:
        """What holds the message back before its windows are asked: a throttling pause, or
        the slots promised to earlier ones (every one, for a fresh message; one given again to a
        message earlier in line, for a promised one). Redeems the message's own promise; also
        answers its place in line when it came back at its slot (None: it is fresh)."""
        self._tick(now)
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        if acct is None:
            return None, None
        place = acct.redeem(promised) if promised is not None else None
        acct.outstanding(now)  # others' promises (and slots given again) past their grace go
        if place is not None and promised is not None and promised > now:
            place = None  # back early (`queue retry`): its promise is given up, it is fresh
        if acct.pause.until > now:
            spent = self._answer(acct, upstream.name, "throttled", acct.pause.until, now, promise)
            return spent, place
        budget = acct.waits_for or "throttled"
        if messages and place is None and acct.outstanding(now):
            return self._answer(acct, upstream.name, budget, now, now, promise), None
        if messages and place is not None and (ahead := acct.ahead(place, now)) is not None:
            # Just after the earlier one, keeping its place; never a time already past (the
            # earlier one is late: this one waits a step, until it comes back or its grace ends).
            after = ahead + AFTER if ahead + AFTER > now else now + _step(acct)
            return self._answer(acct, upstream.name, budget, after, now, promise, place), place
        return None, place

    def spend(
        self,
        upstream: UpstreamConfig,
        sender: str,
        messages: int,
        recipients: int,
        now: float,
        *,
        promise: bool = True,
        place: float | None = None,
    ) -> Spent | None:
        """The windows' part of `take`: both have room (taken) or a `Spent`. `place`: the
        message came back at its promised slot, this is its place in line (a slot it is given
        now keeps it)."""
        acct = self.account(upstream, identity(upstream, sender))
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
            return self._answer(acct, upstream.name, budget, free, now, promise, place)
        if acct.messages is not None:
            acct.messages.add(messages, now)
        if acct.rcpts is not None:
            acct.rcpts.add(recipients, now)
        return None

    def count(
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> None:
        """Record a take decided elsewhere (Redis), for this instance's metrics and for its
        share while Redis is away."""
        acct = self.account(upstream, identity(upstream, sender))
        if acct.messages is not None:
            acct.messages.add(messages, now)
        if acct.rcpts is not None:
            acct.rcpts.add(recipients, now)

    def refund(
        self, upstream: UpstreamConfig, sender: str, taken: Taken, messages: int, recipients: int
    ) -> None:
        """Give back `messages` and `recipients` of `taken` (the provider cannot have counted
        them): its events leave the windows (nothing if they already left)."""
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        if acct is None:
            return
        if acct.messages is not None and messages:
            acct.messages.remove(messages, taken.at)
        if acct.rcpts is not None and recipients:
            acct.rcpts.remove(recipients, taken.at)

    def paused(self, upstream: UpstreamConfig, sender: str, now: float) -> Spent | None:
        """The identity's throttling pause, if it is on."""
        acct = self._accounts.get((upstream.name, identity(upstream, sender)))
        if acct is None or acct.pause.until <= now:
            return None
        return Spent(upstream.name, "throttled", self._peek(acct, acct.pause.until))

    def hold(
        self,
        upstream: UpstreamConfig,
        sender: str,
        until: float,
        now: float,
        *,
        promise: bool = True,
    ) -> Spent:
        """Another instance was told to slow down for this identity: the pause holds here too,
        until `until` (no ``upstream.throttled`` here: that instance wrote it)."""
        acct = self.account(upstream, identity(upstream, sender))
        if acct.pause.until < until:
            acct.pause = Pause(until, max(acct.pause.seconds, until - now))
            acct.promised, acct.slots, acct.again = 0.0, [], []
        return self._answer(acct, upstream.name, "throttled", acct.pause.until, now, promise)

    def spent(
        self,
        upstream: UpstreamConfig,
        sender: str,
        budget: str,
        free: float,
        now: float,
        *,
        promise: bool = True,
        place: float | None = None,
    ) -> Spent:
        """A `Spent` for a budget found spent elsewhere (Redis), with this instance's slot."""
        acct = self.account(upstream, identity(upstream, sender))
        return self._answer(acct, upstream.name, budget, free, now, promise, place)

    def promise(self, upstream: UpstreamConfig, sender: str, spent: Spent) -> Spent:
        """Keep the slot `spent` offered (taken with ``promise=False``): the message waits for
        it. The slot may be later than offered, when others were promised meanwhile."""
        acct = self.account(upstream, identity(upstream, sender))
        return Spent(spent.upstream, spent.budget, self._promise(acct, spent), spent.place)

    def _answer(
        self,
        acct: Account,
        upstream: str,
        budget: str,
        free: float,
        now: float,
        promise: bool,
        place: float | None = None,
    ) -> Spent:
        offered = Spent(
            upstream, budget, free if place is not None else self._peek(acct, free), place
        )
        return Spent(upstream, budget, self._promise(acct, offered), place) if promise else offered

    @staticmethod
    def _peek(acct: Account, free: float) -> float:
        """The next slot not yet promised, from `free` on (one pace interval apart)."""
        return free if acct.promised < free else acct.promised + _step(acct)

    def _promise(self, acct: Account, spent: Spent) -> float:
        acct.waits_for = spent.budget
        if spent.place is not None:  # given again, in its place in line: the time it frees
            bisect.insort(acct.slots, spent.until)
            acct.again.append((spent.until, spent.place))
            acct.promised = max(acct.promised, spent.until)
            return spent.until
        slot = self._peek(acct, spent.until)
        acct.promised = slot
        acct.slots.append(slot)
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
        acct.promised, acct.slots, acct.again = 0.0, [], []
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


__all__ = [
    "DAY",
    "PAUSE_FIRST",
    "PAUSE_MAX",
    "PROMISE_GRACE",
    "Account",
    "Ledger",
    "Spent",
    "Taken",
    "Window",
    "describe",
    "has_budget",
    "identity",
]
