"""The transaction's side of the provider budgets, against task.Clock and scripted sessions."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.outbound.failover import Cooldowns
from gateway.outbound.transaction import Transaction
from gateway.policy.budgets import PAUSE_FIRST, Ledger
from gateway.smtp.replies import Reply
from tests.outbound.fakes import FakePool, FakeSession, clock, fired, lookup, upstreams

CONFIGS = upstreams(
    "m365", "backup", pace="2/minute", username="relay@corp.example", password_env="PW"
)
QUOTA = Reply(554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
THREADS = Reply(432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded")


def pool(name: str = "m365", **script: Any) -> FakePool:
    return FakePool(CONFIGS[name], FakeSession(CONFIGS[name], **script))


def deliver(ledger: Ledger, now: Any, *pools: FakePool, sender: str = "a@example.com") -> Any:
    txn = Transaction(
        tuple(p.config.name for p in pools), lookup(pools), Cooldowns(), now, sender, budgets=ledger
    )

    async def go() -> Reply:
        [answer] = await txn.open(["ops@example.net"])
        if not answer.is_positive:
            return answer
        await txn.data()
        txn.write(b"Subject: x\r\n\r\nbody\r\n")
        return await txn.end()

    return txn, fired(defer.Deferred.fromCoroutine(go()))


def test_the_pace_holds_on_the_clock_and_frees_with_it():
    """2/minute: two go, the third is 451 4.7.1 naming the pace, and goes when the minute is over."""
    ledger, now = Ledger(), clock(0.0)
    assert deliver(ledger, now, pool())[1].code == 250
    assert deliver(ledger, now, pool())[1].code == 250
    txn, reply = deliver(ledger, now, pool())
    assert (reply.code, reply.enhanced) == (451, "4.7.1") and "pace 2/minute" in reply.text
    assert txn.pacer.paced is not None and txn.pacer.paced.until == 60.0
    now.advance(60.0)
    assert deliver(ledger, now, pool())[1].code == 250


def test_a_spent_budget_moves_on_to_the_backup():
    """The first upstream's budget spent: the next one of the route takes the message."""
    ledger, now = Ledger(), clock(0.0)
    for _ in range(2):
        deliver(ledger, now, pool(), pool("backup"))
    txn, reply = deliver(ledger, now, pool(), pool("backup"))
    assert reply.code == 250 and txn.pool is not None and txn.pool.config.name == "backup"
    assert "pace 2/minute" in txn.tried[0]["reason"]


def test_a_quota_5xx_after_the_data_is_451_and_pauses_the_mailbox():
    """SubmissionQuotaExceededException: never a 5xx; the next message waits out the pause."""
    ledger, now = Ledger(), clock(0.0)
    txn, reply = deliver(ledger, now, pool(END=QUOTA))
    assert (reply.code, reply.enhanced) == (451, "4.7.1")
    assert txn.pacer.throttled_by[0]["upstream"] == "m365"
    _, reply = deliver(ledger, now, pool())
    assert reply.code == 451 and "throttling" in reply.text
    now.advance(PAUSE_FIRST)
    assert deliver(ledger, now, pool())[1].code == 250


def test_a_throttling_4xx_is_passed_on_and_pauses():
    """432 4.3.2 at MAIL: the app gets the provider's own 4xx; the mailbox is paused."""
    ledger, now = Ledger(), clock(0.0)
    _, reply = deliver(ledger, now, pool(MAIL=THREADS))
    assert reply == THREADS
    assert ledger.pauses == {"m365": 1}


def test_each_sender_is_paced_apart_with_the_sender_placeholder():
    """username = "$sender": one sender's spent pace leaves another's whole."""
    configs = upstreams(
        "shared",
        pace="1/minute",
        username="$sender",
        auth="xoauth2",
        oauth_token_url="https://t.example/t",
        oauth_client_id="c",
        oauth_client_secret_env="S",
        oauth_scope="s",
    )
    ledger, now = Ledger(), clock(0.0)

    def shared() -> FakePool:
        return FakePool(configs["shared"], FakeSession(configs["shared"]))

    assert deliver(ledger, now, shared(), sender="a@example.com")[1].code == 250
    assert deliver(ledger, now, shared(), sender="a@example.com")[1].code == 451
    assert deliver(ledger, now, shared(), sender="b@example.com")[1].code == 250
