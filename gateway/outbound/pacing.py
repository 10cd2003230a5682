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

Refunds. The provider counts a message it was given; the budget is taken before the upstream is
reached. The pacer remembers what it took at each upstream (`gateway.policy.budgets.Taken`) and
gives it back, once: `refund` when the transaction there failed before the provider could count
the message (no session, MAIL refused, moved on to the next upstream), `refused` for the
recipients the upstream (or the transaction) did not take — with the last of them the message
goes back too, and a later recipient of the same transaction takes the message again.

Promises. The pacer takes without promising: a slot is promised only to a message that is really
kept back, by the queue (`promise`, after the round: never for a message another upstream of the
route took, never in relay mode, whose app retries on its own schedule). `promised` is the slot
the queue promised this message before (it goes first when it comes back at that slot).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.config.model import UpstreamConfig
from gateway.outbound.classify import throttling
from gateway.policy.budgets import Spent, Taken, has_budget
from gateway.smtp import replies
from gateway.smtp.replies import Reply

_TICKETS = itertools.count(1)  # each take's name (with the store's process token: unique)


class Budgets(Protocol):
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
    ) -> Any: ...  # Spent | None, or a Deferred of one

    def promise(self, upstream: UpstreamConfig, sender: str, spent: Spent) -> Spent: ...

    def refund(
        self, upstream: UpstreamConfig, sender: str, taken: Taken, messages: int, recipients: int
    ) -> None: ...

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
        self.paced: Spent | None = None  # the earliest slot a budget or a pause offered
        self.throttled_by: list[dict[str, str]] = []  # upstream and its throttling reply
        self.promised: float | None = None  # queue: the slot this message was promised before
        self._paced_at: UpstreamConfig | None = None  # the upstream of `paced`
        self._taken: dict[str, list[Taken]] = {}  # upstream -> what is still taken there

    def _keep(self, upstream: UpstreamConfig, spent: Spent) -> None:
        if self.paced is None or spent.until < self.paced.until:
            self.paced, self._paced_at = spent, upstream

    async def spend(self, upstream: UpstreamConfig, recipients: int) -> Spent | None:
        """Take one message with `recipients` from `upstream`'s budget for the sender."""
        return await self._take(upstream, 1, recipients, self.promised)

    async def more(self, upstream: UpstreamConfig) -> Spent | None:
        """One more recipient (cut-through) of a message already counted (or counted again,
        when every recipient before was given back)."""
        held = any(t.messages for t in self._taken.get(upstream.name, ()))
        return await self._take(upstream, 0 if held or not has_budget(upstream) else 1, 1, None)

    async def _take(
        self, upstream: UpstreamConfig, messages: int, rcpts: int, promised: float | None
    ) -> Spent | None:
        if self.budgets is None:
            return None
        now, ticket = self.clock.seconds(), f"t{next(_TICKETS)}"
        answer = self.budgets.take(
            upstream,
            self.sender,
            messages,
            rcpts,
            now,
            promise=False,
            promised=promised,
            ticket=ticket,
        )
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, Spent):
            self._keep(upstream, answer)
            return answer
        if has_budget(upstream):
            self._taken.setdefault(upstream.name, []).append(Taken(ticket, now, messages, rcpts))
        return None

    def promise(self) -> Spent | None:
        """Queue mode, the message kept back: keep the slot `paced` offered (the budgets may
        give a later one, when others were promised meanwhile); the slot it waits for."""
        if self.budgets is not None and self.paced is not None and self._paced_at is not None:
            self.paced = self.budgets.promise(self._paced_at, self.sender, self.paced)
        return self.paced

    # --- refunds ---------------------------------------------------------------------------

    def refund(self, upstream: UpstreamConfig) -> None:
        """Give back everything still taken at `upstream` (the provider counted none of it)."""
        for taken in self._taken.pop(upstream.name, []):
            self._give(upstream, taken, taken.messages, taken.recipients)

    def refused(self, upstream: UpstreamConfig, count: int) -> None:
        """`count` recipients taken at `upstream` were not accepted there: give back their
        share; with the last of them, the message's too."""
        takes = self._taken.get(upstream.name, [])
        for taken in reversed(takes):
            given = min(count, taken.recipients)
            if given:
                self._give(upstream, taken, 0, given)
                count -= given
            if not count:
                break
        if takes and not any(t.recipients for t in takes):
            self.refund(upstream)

    def answered(
        self, upstream: UpstreamConfig, answers: Sequence[Reply | None], failed: bool
    ) -> None:
        """The recipients sent to `upstream` were answered (`failed`: the transaction broke off
        there): give back what the provider will not count."""
        if failed:
            self.refund(upstream)
        else:
            self.refused(upstream, sum(1 for a in answers if a is None or not a.is_positive))

    def _give(self, upstream: UpstreamConfig, taken: Taken, messages: int, rcpts: int) -> None:
        if self.budgets is not None and (messages or rcpts):
            self.budgets.refund(upstream, self.sender, taken, messages, rcpts)
        taken.messages -= messages
        taken.recipients -= rcpts

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
        self._keep(upstream, Spent(upstream.name, "throttled", now + seconds))
        self.throttled_by.append(
            {"upstream": upstream.name, "reply": str(answer)[:300], "known": entry.source}
        )
        return True

    def delivered(self, upstream: UpstreamConfig) -> None:
        if self.budgets is not None:
            self.budgets.delivered(upstream, self.sender)


__all__ = ["Budgets", "Pacer", "budget_reply", "has_budget", "is_paced"]
