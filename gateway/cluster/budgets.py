"""Provider budgets that the instances share: one identity's pace is one pace, however many send.

`SharedBudgets` is the outbound side's `Budgets` (`gateway.outbound.pacing`) over Redis: each
take runs the store's budget script (`Store.spend`, both rolling windows in one round trip,
under ``mailgate:budget:UPSTREAM:IDENTITY``, the identity hashed), in the cluster's thread pool,
never on the reactor (the budget metrics count what this instance took). A throttling pause
this instance is told of is published (``mailgate:pause:UPSTREAM:IDENTITY``, hashed, expiring
with the pause) and the others learn it from their next heartbeat (`learn`, no round trip of
its own), on every upstream, with a budget or not; the slots promised to paced mail stay with
this instance (`gateway.policy.budgets.Ledger`). While Redis is away the instance takes from
its share of each budget (the budget divided by the instances last seen alive), locally, from
the same windows that count what it took through Redis (so its share is what is left of it),
and its pauses are its own.

A refund (`refund`: the provider cannot have counted the take) leaves the local windows, and
Redis's (the store's ``refund`` script removes the take's members by its ticket) when Redis is
there; while it is away the local refund stands alone and the shared windows keep the take
until it ages out.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.policy.budgets import Ledger, Spent, Taken, has_budget, identity
from gateway.policy.ratelimit import share


class SharedBudgets:
    def __init__(self, shared: Any, ledger: Ledger) -> None:
        self.shared = shared  # gateway.cluster.shared.SharedState
        self.ledger = ledger  # pauses, promised slots, and the fallback while Redis is away
        self._learned: dict[str, float] = {}  # "UPSTREAM:IDENTITY" -> end (this clock): others'

    def learn(self, pauses: dict[str, float]) -> None:
        """The pauses in Redis (``UPSTREAM:IDENTITY`` -> seconds left), from a heartbeat."""
        now = self.shared.reactor.seconds()
        self._learned = {member: now + seconds for member, seconds in pauses.items()}

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
    ) -> Any:
        early, place = self.ledger.before(
            upstream, sender, messages, now, promise=promise, promised=promised
        )
        if early is not None:
            return early
        if self._learned:
            until = self._learned.get(f"{upstream.name}:{_hashed(upstream, sender)}", 0.0)
            if until > now:  # another instance was told to slow down for this identity
                return self.ledger.hold(upstream, sender, until, now, promise=promise)
        if not has_budget(upstream):
            return None
        who = _hashed(upstream, sender)
        pace = (upstream.pace.count, upstream.pace.seconds) if upstream.pace else None

        def answered(answer: tuple[int, float] | None) -> Spent | None:
            if answer is None:  # taken in Redis; counted here too (metrics, the local share)
                self.ledger.count(upstream, sender, messages, recipients, now)
                return None
            which, seconds = answer
            budget = (
                f"pace {upstream.pace.text}"
                if which == 1 and upstream.pace
                else f"max_recipients_per_day {upstream.max_recipients_per_day}"
            )
            later = self.shared.reactor.seconds()
            return self.ledger.spent(
                upstream, sender, budget, later + seconds, later, promise=promise, place=place
            )

        return self.shared.ask(
            self.shared.store.spend,
            (
                f"budget:{upstream.name}:{who}",
                pace,
                upstream.max_recipients_per_day,
                messages,
                recipients,
                ticket,
            ),
            answered,
            lambda: self._local(upstream, sender, messages, recipients, now, promise, place),
        )

    def _local(
        self,
        upstream: UpstreamConfig,
        sender: str,
        messages: int,
        recipients: int,
        now: float,
        promise: bool,
        place: float | None,
    ) -> Spent | None:
        """This instance's share of the budget, while Redis cannot be asked: the same windows
        (what this instance took through Redis still counts), against the share's limits."""
        self.shared.metrics.cluster_decision("local")
        instances = max(1, self.shared.instances)
        mine = replace(
            upstream,
            pace=share(upstream.pace, instances) if upstream.pace else None,
            max_recipients_per_day=math.ceil(upstream.max_recipients_per_day / instances)
            if upstream.max_recipients_per_day
            else None,
        )
        return self.ledger.spend(
            mine, sender, messages, recipients, now, promise=promise, place=place
        )

    def promise(self, upstream: UpstreamConfig, sender: str, spent: Spent) -> Spent:
        return self.ledger.promise(upstream, sender, spent)

    def refund(
        self, upstream: UpstreamConfig, sender: str, taken: Taken, messages: int, recipients: int
    ) -> None:
        """Give a take back here and, best effort, in Redis (`taken` as it was before)."""
        self.ledger.refund(upstream, sender, taken, messages, recipients)
        if has_budget(upstream):
            key = f"budget:{upstream.name}:{_hashed(upstream, sender)}"
            self.shared.refund(key, taken.ticket, messages, taken.recipients, recipients)

    def throttled(self, upstream: UpstreamConfig, sender: str, now: float, reply: str) -> float:
        seconds = self.ledger.throttled(upstream, sender, now, reply)
        self.shared.pause(f"{upstream.name}:{_hashed(upstream, sender)}", seconds)
        return seconds

    def delivered(self, upstream: UpstreamConfig, sender: str) -> None:
        self.ledger.delivered(upstream, sender)

    def backlog(self, upstream: UpstreamConfig, sender: str, now: float) -> float:
        return self.ledger.backlog(upstream, sender, now)

    def usage(self, now: float) -> Any:
        return self.ledger.usage(now)


def _hashed(upstream: UpstreamConfig, sender: str) -> str:
    """The identity as Redis keys name it: hashed, never an address."""
    return hashlib.sha256(identity(upstream, sender).encode()).hexdigest()[:32]
