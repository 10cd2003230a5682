"""Unit tests of gateway/inbound/transaction.py: recipient results, outcome, message.result fields."""

from __future__ import annotations

from gateway.inbound.transaction import UNACCEPTED_LISTED, Transaction, outcome_of
from gateway.policy.headers import HeaderEdits
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import parse_mail
from gateway.smtp.replies import Reply
from tests.inbound.fakes import RECIPIENT_OK, FakeDelivery

WHO = {"client_ip": "127.0.0.1", "helo": "a", "app": None}
DEFERRED = Reply(451, "4.4.1", "Upstream unreachable")


def transaction(mode: str = "relay") -> Transaction:
    mail = parse_mail("FROM:<app@example.com>")
    return Transaction(mail, delivery=FakeDelivery(mode, ("up",), mail))


def test_outcome_of_a_reply():
    """2xx is relayed, 4xx deferred, 5xx rejected."""
    assert [outcome_of(r) for r in (RECIPIENT_OK, DEFERRED, replies.NO_RULE)] == [
        "relayed",
        "deferred",
        "rejected",
    ]


def test_answered_and_refused_recipients_name_their_rule_once():
    """Each RCPT is one recipient result; each deciding rule is listed once, in order."""
    txn = transaction()
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "all")
    txn.answered(DEFERRED, Address("b@example.net"), "all")
    txn.refused(Address("c@x.test"), replies.NO_RULE, limit="no matching rule")
    assert [(r.address, r.result) for r in txn.recipients] == [
        ("a@example.net", "accepted"),
        ("b@example.net", "deferred"),
        ("c@x.test", "rejected"),
    ]
    assert txn.rules == ["all"] and [r.address for r in txn.accepted] == ["a@example.net"]
    assert txn.recipients[2].as_dict()["limit"] == "no matching rule"
    assert "rule" not in txn.recipients[2].as_dict()


def test_mismatch_keeps_one_delivery_route_and_header_edits():
    """A recipient with another mode, relay route or header edits cannot join the transaction."""
    txn = transaction()
    assert txn.mismatch("relay", ("up",), None) is None
    assert txn.mismatch("queue", ("up",), None) == (
        replies.OTHER_DELIVERY,
        "one delivery mode per transaction",
    )
    assert txn.mismatch("relay", ("other",), None)[0] == replies.OTHER_ROUTE
    assert txn.mismatch("relay", ("up",), HeaderEdits(strip=frozenset({"x-a"})))[0] == (
        replies.OTHER_HEADER_EDITS
    )
    assert Transaction(txn.mail).mismatch("queue", ("x",), None) is None  # nothing chosen yet


def test_queue_route_may_differ():
    """In queue mode recipients may go to other upstreams (the runner groups them by route)."""
    assert transaction("queue").mismatch("queue", ("other",), None) is None


def test_abandoned_outcome():
    """Gone before a final reply: failed if a recipient was accepted, else deferred or rejected."""
    txn = transaction()
    txn.refused(Address("a@x.test"), replies.NO_RULE)
    assert txn.abandoned_outcome() == "rejected"
    txn.answered(DEFERRED, Address("b@example.net"), "all")
    assert txn.abandoned_outcome() == "deferred"
    txn.answered(RECIPIENT_OK, Address("c@example.net"), "all")
    assert txn.abandoned_outcome() == "failed"


def test_result_settles_accepted_recipients_with_the_final_reply():
    """message.result: accepted recipients take the final reply; the delivery adds its fields."""
    txn = transaction()
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "all")
    txn.refused(Address("c@x.test"), replies.NO_RULE)
    fields = txn.result(WHO, DEFERRED, limit="x")
    assert fields["outcome"] == "deferred" and fields["reply"] == str(DEFERRED)
    assert [r["result"] for r in fields["recipients"]] == ["deferred", "rejected"]
    assert fields["recipients"][0]["reply"] == str(DEFERRED)
    assert (fields["client_ip"], fields["upstream"], fields["limit"]) == ("127.0.0.1", "up", "x")
    assert "size" not in fields  # no DATA yet


def test_result_without_a_reply_fails_accepted_recipients():
    """Abandoned (no final reply): accepted recipients are failed, the reason recorded."""
    txn = transaction()
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "all")
    fields = txn.result(WHO, None, "failed", reason="client sent RSET")
    assert fields["recipients"][0]["result"] == "failed" and "reply" not in fields
    assert fields["reason"] == "client sent RSET"


def test_queue_result_keeps_only_the_commit_failure_reason():
    """A failed spool commit: no upstream fields, only why the commit failed."""
    txn = transaction("queue")
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "q")
    fields = txn.result(WHO, replies.QUEUE_WRITE_FAILED)
    assert "queue_id" not in fields and "upstreams" not in fields


def test_queued_fields():
    """message.queued: the spool entry, its upstreams and the recipients marked queued."""
    txn = transaction("queue")
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "q")
    fields = txn.queued("127.0.0.1", "a", replies.QUEUED)
    assert (fields["queue_id"], fields["upstreams"], fields["reply"]) == (
        "q1",
        ["up"],
        str(replies.QUEUED),
    )
    assert fields["recipients"][0]["result"] == "queued" and "app" not in fields


def test_recipients_not_accepted_are_listed_up_to_a_bound_then_counted():
    """Every accepted recipient is listed; of the others the first UNACCEPTED_LISTED, then a count."""
    txn = transaction()
    txn.answered(RECIPIENT_OK, Address("a@example.net"), "all")
    for i in range(UNACCEPTED_LISTED + 50):
        txn.refused(Address(f"r{i}@example.net"), replies.TOO_MANY_RECIPIENTS)
    txn.answered(RECIPIENT_OK, Address("b@example.net"), "all")
    txn.answered(DEFERRED, Address("c@example.net"), "all")  # past the bound: counted only
    assert txn.accepted_count == 2 and len(txn.recipients) == 2 + UNACCEPTED_LISTED
    assert txn.abandoned_outcome() == "failed"
    fields = txn.result(WHO, RECIPIENT_OK)
    assert fields["recipients_omitted"] == 51
    assert [r["address"] for r in fields["recipients"]][-1] == "b@example.net"


def test_a_deferred_recipient_past_the_bound_still_decides_the_outcome():
    """Abandoned with nothing accepted: deferred if any recipient was, listed or not."""
    txn = transaction()
    for i in range(UNACCEPTED_LISTED):
        txn.refused(Address(f"r{i}@example.net"), replies.NO_RULE)
    txn.answered(DEFERRED, Address("late@example.net"), "all")
    assert txn.recipients_omitted == 1 and txn.abandoned_outcome() == "deferred"
    assert "recipients_omitted" not in transaction().result(WHO, replies.NO_RULE)
