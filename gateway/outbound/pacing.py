"""A transaction's side of the provider budgets: take from them, notice throttling. No reactor.

`Pacer` is what `gateway.outbound.transaction.Transaction` asks before it takes a session from
an upstream with a budget (`spend`: None, or the `Spent` that sends it to the next upstream of
the route), and what it shows each upstream reply to (`check`): a throttling reply
(`gateway.outbound.classify.throttling`) pauses the sending identity and becomes
``451 4.7.1`` for the app (never a 5xx: the same message goes later), the upstream's own words
staying in the audit. `paced` is the earliest time a budget or pause lets the message go,
which the queue takes as the next attempt (not counted as a failed one).

The budgets are `gateway.policy.budgets.Ledger` (this instance's) or the cluster's shared
variant; `take` may answer a Deferred (Redis), awaited here.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from gateway.config.model import UpstreamConfig
from gateway.outbound.classify import throttling
from gateway.policy.budgets import Spent, has_budget
from gateway.smtp import replies
from gateway.smtp.replies import Reply


class Budgets(Protocol):
    def take(
        self, upstream: UpstreamConfig, sender: str, messages: int, recipients: int, now: float
    ) -> Any: ...  # Spent | None, or a Deferred of one

    def throttled(self, upstream: UpstreamConfig, sender: str, now: float, reply: str) -> float: ...

    def delivered(self, upstream: UpstreamConfig, sender: str) -> None: ...


def budget_reply(spent: Spent) -> Reply:
    """``451 4.7.1`` naming the budget (or the pause) that keeps the message back."""
    if spent.throttled:
        return replies.UPSTREAM_THROTTLING.with_text(
            f"Upstream {spent.upstream} is throttling this sender; paused, try again later"
        )
    return replies.BUDGET_SPENT.with_text(
        f"Upstream {spent.upstream} budget {spent.budget} spent for this sender, try again later"
    )


def is_paced(last_reply: str | None) -> bool:
    """A recipient's recorded reply says it waits for a budget or a throttling pause."""
    return (
        bool(last_reply)
        and str(last_reply).startswith("451 4.7.1 Upstream ")
        and (
            " spent for this sender" in str(last_reply)
            or " is throttling this sender" in str(last_reply)
        )
    )


class Pacer:
    def __init__(self, budgets: Budgets | None, sender: str, clock: Any) -> None:
        self.budgets = budgets
        self.sender = sender
        self.clock = clock  # IReactorTime
        self.paced: Spent | None = None  # the earliest slot a budget or a pause promised
        self.throttled_by: list[dict[str, str]] = []  # upstream and its throttling reply

    def _keep(self, spent: Spent) -> None:
        if self.paced is None or spent.until < self.paced.until:
            self.paced = spent

    async def spend(self, upstream: UpstreamConfig, recipients: int) -> Spent | None:
        """Take one message with `recipients` from `upstream`'s budget for the sender."""
        return await self._take(upstream, 1, recipients)

    async def more(self, upstream: UpstreamConfig) -> Spent | None:
        """One more recipient (cut-through) of a message already counted."""
        return await self._take(upstream, 0, 1)

    async def _take(self, upstream: UpstreamConfig, messages: int, rcpts: int) -> Spent | None:
        if self.budgets is None:
            return None
        answer = self.budgets.take(upstream, self.sender, messages, rcpts, self.clock.seconds())
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, Spent):
            self._keep(answer)
            return answer
        return None

    def check(self, upstream: UpstreamConfig, answer: Reply | None, step: str) -> Reply | None:
        """A throttling reply at `step` pauses the identity. The reply for the app when the
        upstream's own will not do: a throttling 5xx becomes ``451 4.7.1`` (the same message
        goes later); a 4xx is passed on as it was said."""
        if not self.throttles(upstream, answer, step):
            return None
        assert answer is not None and self.paced is not None
        return budget_reply(self.paced) if answer.is_permanent else None

    def throttles(self, upstream: UpstreamConfig, answer: Reply | None, step: str) -> bool:
        """Whether `answer` is a throttling reply (and if so, pause the identity)."""
        if self.budgets is None or (entry := throttling(answer, step)) is None:
            return False
        assert answer is not None
        now = self.clock.seconds()
        seconds = self.budgets.throttled(upstream, self.sender, now, str(answer))
        self._keep(Spent(upstream.name, "throttled", now + seconds))
        self.throttled_by.append(
            {"upstream": upstream.name, "reply": str(answer)[:300], "known": entry.source}
        )
        return True

    def delivered(self, upstream: UpstreamConfig) -> None:
        if self.budgets is not None:
            self.budgets.delivered(upstream, self.sender)


__all__ = ["Budgets", "Pacer", "budget_reply", "has_budget", "is_paced"]
