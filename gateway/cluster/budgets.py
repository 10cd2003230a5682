"""Provider budgets that the instances share: one identity's pace is one pace, however many send.

`SharedBudgets` is the outbound side's `Budgets` (`gateway.outbound.pacing`) over Redis: each
take runs the store's budget script (`Store.spend`, both rolling windows in one round trip,
under ``mailgate:budget:UPSTREAM:IDENTITY``, the identity hashed), in the cluster's thread pool,
never on the reactor (the budget metrics count what this instance took). A throttling pause
this instance is told of is published (``mailgate:pause:UPSTREAM:IDENTITY``, hashed, expiring
with the pause) and the others learn it from their next heartbeat (`learn`, no round trip of
its own), on every upstream, with a budget or not; the slots promised to paced mail stay with
this instance (`gateway.policy.budgets.Ledger`). While Redis is away the instance takes from
its share of each budget (the budget divided by the instances last seen alive), locally, and
its pauses are its own.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.policy.budgets import Ledger, Spent, has_budget, identity
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
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> Any:
        paused = self.ledger.paused(upstream, sender, now)
        if paused is not None:
            return paused
        if self._learned:
            until = self._learned.get(f"{upstream.name}:{_hashed(upstream, sender)}", 0.0)
            if until > now:  # another instance was told to slow down for this identity
                return self.ledger.hold(upstream, sender, until, now)
        if not has_budget(upstream):
            return self.ledger.take(upstream, sender, messages, recipients, now)
        who = _hashed(upstream, sender)
        pace = (upstream.pace.count, upstream.pace.seconds) if upstream.pace else None

        def answered(answer: tuple[int, float] | None) -> Spent | None:
            if answer is None:  # taken in Redis; counted here too, for this instance's metrics
                self.ledger.count(upstream, sender, messages, recipients, now)
                return None
            which, seconds = answer
            budget = (
                f"pace {upstream.pace.text}"
                if which == 1 and upstream.pace
                else f"max_recipients_per_day {upstream.max_recipients_per_day}"
            )
            later = self.shared.reactor.seconds()
            return self.ledger.promise(upstream, sender, budget, later + seconds, later)

        return self.shared.ask(
            self.shared.store.spend,
            (
                f"budget:{upstream.name}:{who}",
                pace,
                upstream.max_recipients_per_day,
                messages,
                recipients,
            ),
            answered,
            lambda: self._local(upstream, sender, messages, recipients, now),
        )

    def _local(
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> Spent | None:
        """This instance's share of the budget, while Redis cannot be asked."""
        self.shared.metrics.cluster_decision("local")
        instances = max(1, self.shared.instances)
        mine = replace(
            upstream,
            pace=share(upstream.pace, instances) if upstream.pace else None,
            max_recipients_per_day=math.ceil(upstream.max_recipients_per_day / instances)
            if upstream.max_recipients_per_day
            else None,
        )
        return self.ledger.take(mine, sender, messages, recipients, now)

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
