"""Unit tests of gateway/inbound/recipient.py: RCPT against an in-memory host (no sockets)."""

from __future__ import annotations

from gateway.smtp import replies
from tests.inbound.fakes import FakeHost, config
from tests.inbound.test_session import say, start


def test_recipient_without_rule_is_refused_and_recorded():
    """No matching rule: 550 at RCPT, 554 at DATA; RSET ends the transaction as rejected."""
    only = [{"name": "ours", "action": "relay", "upstream": "up", "recipients": ["*@example.net"]}]
    host = FakeHost(config({"rules": only}))
    session = start(host)
    [_, _, rcpt] = say(session, "EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@elsewhere.test>")
    assert rcpt == replies.NO_RULE
    assert say(session, "DATA", "RSET") == [replies.NO_VALID_RECIPIENTS, replies.RESET_OK]
    assert host.deliveries == []
    [record] = host.events("message.result")
    assert record["outcome"] == "rejected" and record["reason"] == "client sent RSET"
    assert record["recipients"][0]["limit"] == "no matching rule"


def test_rule_rate_is_taken_once_per_transaction_on_the_host_clock():
    """rules[].rate: past the rate RCPT is 450 4.7.1; the bucket refills as the host's clock runs."""
    rated = [{"name": "all", "action": "relay", "upstream": "up", "rate": "1/minute"}]
    host = FakeHost(config({"rules": rated}))
    session = start(host)
    say(session, "EHLO a")
    first = say(
        session, "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "RCPT TO:<c@x.test>"
    )
    assert [r.code for r in first] == [250, 250, 250]  # one message, one token
    say(session, "RSET")
    [_, limited] = say(session, "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>")
    assert limited.code == 450 and limited.enhanced == "4.7.1"
    assert "Rate limit of rule all (1/minute)" in limited.text
    host.reactor.advance(60)
    say(session, "RSET")
    assert say(session, "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>")[1].code == 250


def test_queue_rule_without_a_running_spool_is_refused():
    """A queue rule while the host has no spool (a reload added it): RCPT gets the queue refusal."""
    queued = [{"name": "q", "action": "relay", "upstream": "up", "delivery": "queue"}]
    host = FakeHost(config({"rules": queued}), queue_running=False)
    session = start(host)
    replies_ = say(session, "EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>")
    assert replies_[2] == replies.QUEUE_NOT_RUNNING


def test_past_max_recipients_is_452_and_past_max_rcpt_commands_ends_the_session():
    """listener.max_recipients refuses further recipients (452 4.5.3); max_rcpt_commands ends the
    transaction and the session (421 4.7.0) with one message.result naming the limit."""
    host = FakeHost(config(max_recipients=1, max_rcpt_commands=3))
    session = start(host)
    say(session, "EHLO a", "MAIL FROM:<a@example.com>")
    codes = say(session, "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>")
    assert [r.code for r in codes] == [250, replies.TOO_MANY_RECIPIENTS.code]
    say(session, "RCPT TO:<d@example.net>")
    assert say(session, "RCPT TO:<e@example.net>") == [replies.TOO_MANY_RCPT_COMMANDS]
    [delivery] = host.deliveries
    assert delivery.aborted == ["too many RCPT commands"]
    [record] = host.events("message.result")
    assert record["limit"] == "listener.max_rcpt_commands" and session.transaction is None


def test_a_recipient_for_another_delivery_mode_gets_452_4_5_3():
    """A queue rule's recipient after a relay one: sent in a separate transaction (452 4.5.3)."""
    rules = [
        {
            "name": "q",
            "action": "relay",
            "upstream": "up",
            "delivery": "queue",
            "recipients": ["*@queued.test"],
        },
        {"name": "all", "action": "relay", "upstream": "up"},
    ]
    host = FakeHost(config({"rules": rules}))
    session = start(host)
    answers = say(
        session,
        "EHLO a",
        "MAIL FROM:<a@example.com>",
        "RCPT TO:<b@example.net>",
        "RCPT TO:<c@queued.test>",
    )
    assert answers[2].code == 250 and answers[3] == replies.OTHER_DELIVERY
    [delivery] = host.deliveries
    assert delivery.mode == "relay" and delivery.recipients == [("b@example.net", "all")]
