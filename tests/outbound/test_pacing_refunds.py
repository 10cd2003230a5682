"""Refunds: what a transaction took from a budget comes back, once, when the provider cannot have
counted it; and relay mode promises no slot. Against task.Clock and scripted sessions."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.outbound.failover import Cooldowns
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.transaction import Transaction
from gateway.policy.budgets import Ledger, Taken
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from tests.outbound.fakes import FakePool, FakeSession, clock, fired, lookup, upstreams

CONFIGS = upstreams(
    "m365",
    "backup",
    pace="2/minute",
    max_recipients_per_day=10,
    username="relay@corp.example",
    password_env="PW",
)
REFUSED = Reply(550, "5.1.1", "No such user")
LATER = Reply(451, "4.3.0", "Try again later")


class Counting(Ledger):
    """A ledger that also records each refund it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.refunds: list[tuple[str, int, int]] = []

    def refund(self, upstream: Any, sender: str, taken: Taken, messages: int, rcpts: int) -> None:
        self.refunds.append((upstream.name, messages, rcpts))
        super().refund(upstream, sender, taken, messages, rcpts)


def pool(name: str = "m365", failure: UpstreamFailure | None = None, **script: Any) -> FakePool:
    return FakePool(CONFIGS[name], FakeSession(CONFIGS[name], **script), failure)


def used(ledger: Ledger, now: Any, name: str = "m365") -> dict[str, int]:
    return {b: n for u, b, n, _ in ledger.usage(now.seconds()) if u == name}


def transaction(ledger: Ledger, now: Any, *pools: FakePool) -> Transaction:
    return Transaction(
        tuple(p.config.name for p in pools), lookup(pools), Cooldowns(), now, "a@x", budgets=ledger
    )


def opened(txn: Transaction, recipients: list[str]) -> list[Reply]:
    return fired(defer.Deferred.fromCoroutine(txn.open(recipients)))


def deliver(txn: Transaction, recipients: list[str]) -> Reply:
    async def go() -> Reply:
        answers = await txn.open(recipients)
        if not any(a.is_positive for a in answers):
            return answers[0]
        await txn.data()
        txn.write(b"Subject: x\r\n\r\nbody\r\n")
        return await txn.end()

    return fired(defer.Deferred.fromCoroutine(go()))


def test_an_upstream_that_gives_no_session_gets_its_budget_back():
    """Connection refused at m365: the backup takes the message; m365's budget is whole."""
    ledger, now = Ledger(), clock(0.0)
    down = pool(failure=UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "m365: refused"))
    txn = transaction(ledger, now, down, pool("backup"))
    assert deliver(txn, ["ops@example.net"]).code == 250
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}
    assert used(ledger, now, "backup") == {"pace": 1, "recipients_per_day": 1}


def test_an_outage_costs_no_budget():
    """Ten failed tries (no session) in a minute of 2/minute: the next message still goes."""
    ledger, now = Ledger(), clock(0.0)
    for _ in range(10):
        down = pool(failure=UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "m365: refused"))
        assert deliver(transaction(ledger, now, down), ["ops@example.net"]).code == 451
    assert deliver(transaction(ledger, now, pool()), ["ops@example.net"]).code == 250


def test_mail_refused_gives_the_budget_back_and_fails_over():
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(MAIL=LATER), pool("backup"))
    assert deliver(txn, ["a@example.net", "b@example.net"]).code == 250
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_mail_refused_5xx_on_the_last_upstream_gives_it_back():
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(MAIL=Reply(550, "5.7.1", "Not allowed")))
    assert deliver(txn, ["a@example.net"]).code == 550
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_every_recipient_refused_gives_back_the_message_and_the_recipients():
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(RCPT=REFUSED))
    assert [a.code for a in opened(txn, ["a@example.net", "b@example.net"])] == [550, 550]
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_recipients_refused_at_rcpt_give_back_their_share():
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(RCPT=[REFUSED, replies.OK, REFUSED]))
    assert deliver(txn, ["a@example.net", "b@example.net", "c@example.net"]).code == 250
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 1}


def test_cut_through_recipients_refused_give_back_theirs_and_a_later_one_counts_the_message():
    """Relay: the first RCPT refused gives back the message too; the second, accepted, takes
    the message again; a third refused gives back only its own."""
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(RCPT=[REFUSED, replies.OK, REFUSED]))
    codes = [fired(defer.Deferred.fromCoroutine(txn.rcpt(f"{n}@example.net"))).code for n in "abc"]
    assert codes == [550, 250, 550]
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 1}


def test_a_connection_lost_at_a_cut_through_rcpt_gives_everything_back():
    ledger, now = Ledger(), clock(0.0)
    lost = UpstreamFailure(replies.UPSTREAM_LOST, "m365: connection lost")
    txn = transaction(ledger, now, pool(RCPT=[replies.OK, lost]))
    assert fired(defer.Deferred.fromCoroutine(txn.rcpt("a@example.net"))).code == 250
    assert fired(defer.Deferred.fromCoroutine(txn.rcpt("b@example.net"))).code == 451
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_a_refund_is_given_once():
    """Asked again (a second failure path, a retry of the refund): nothing more comes back."""
    ledger, now = Counting(), clock(0.0)
    assert deliver(transaction(ledger, now, pool()), ["a@example.net"]).code == 250
    txn = transaction(ledger, now, pool(MAIL=LATER))
    assert deliver(txn, ["a@example.net", "b@example.net"]).code == 451
    txn.pacer.refund(CONFIGS["m365"])
    txn.pacer.refused(CONFIGS["m365"], 2)
    assert ledger.refunds == [("m365", 1, 2)]
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 1}


def test_a_delivered_message_keeps_its_budget():
    ledger, now = Counting(), clock(0.0)
    assert deliver(transaction(ledger, now, pool()), ["a@example.net", "b@example.net"]).code == 250
    assert ledger.refunds == []
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 2}


def test_relay_refusals_promise_no_slot():
    """2/minute spent: relay's refusals (a Transaction never asked to promise) leave the
    backlog empty, so queued mail of the sender is not pushed later."""
    ledger, now = Ledger(), clock(0.0)
    for _ in range(2):
        assert deliver(transaction(ledger, now, pool()), ["a@example.net"]).code == 250
    for _ in range(5):
        txn = transaction(ledger, now, pool())
        assert deliver(txn, ["a@example.net"]).code == 451
        assert txn.pacer.paced is not None and txn.pacer.paced.until == 60.0
    assert ledger.backlog(CONFIGS["m365"], "a@x", now.seconds()) == 0.0
    queued = transaction(ledger, now, pool())
    assert deliver(queued, ["a@example.net"]).code == 451
    kept = queued.pacer.promise()
    assert kept is not None and kept.until == 60.0
    assert ledger.backlog(CONFIGS["m365"], "a@x", now.seconds()) == 60.0


def test_data_refused_gives_the_budget_back():
    """DATA answered 451: nothing went; the message and its recipient come back."""
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool(DATA=LATER))
    assert opened(txn, ["a@example.net"])[0].code == 250
    assert fired(defer.Deferred.fromCoroutine(txn.data())).code == 451
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_an_abort_before_the_dot_gives_the_budget_back():
    """Relay: the app went away after its RCPT was taken upstream; no dot, no count."""
    ledger, now = Ledger(), clock(0.0)
    txn = transaction(ledger, now, pool())
    assert opened(txn, ["a@example.net"])[0].code == 250
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 1}
    txn.abort("client session ended")
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}


def test_a_refused_dot_gives_back_and_a_lost_one_keeps():
    """The dot refused in the upstream's words: nothing was taken. The dot's reply lost: the
    provider may have taken the message, so its budget stays spent."""
    ledger, now = Ledger(), clock(0.0)
    assert deliver(transaction(ledger, now, pool(END=REFUSED)), ["a@example.net"]).code == 550
    assert used(ledger, now) == {"pace": 0, "recipients_per_day": 0}
    lost = UpstreamFailure(replies.UPSTREAM_LOST, "m365: connection lost after the dot")
    assert deliver(transaction(ledger, now, pool(END=lost)), ["a@example.net"]).code == 451
    assert used(ledger, now) == {"pace": 1, "recipients_per_day": 1}
