"""Unit tests of gateway/inbound/body.py: the body on its way to the delivery, and the end of data."""

from __future__ import annotations

from gateway.config.model import App
from gateway.inbound import body
from gateway.inbound.transaction import Transaction
from gateway.policy.headers import HeaderEdits, HeaderRewriter
from gateway.smtp import replies
from gateway.smtp.commands import parse_mail
from gateway.smtp.replies import FROM_NOT_OWNED
from tests.inbound.fakes import FakeDelivery

CHECKED = App("billing", "hash", senders=("*@billing.example.com",), check_from_header=True)
OWNED = b"From: invoices@billing.example.com\r\nSubject: x\r\n\r\nbody\r\n"
NOT_OWNED = b"From: ceo@other.example\r\nSubject: x\r\n\r\nbody\r\n"


def transaction() -> tuple[Transaction, FakeDelivery]:
    mail = parse_mail("FROM:<invoices@billing.example.com>")
    delivery = FakeDelivery("relay", ("up",), mail)
    return Transaction(mail, delivery=delivery), delivery


def test_body_passes_on_and_the_dot_may_go():
    """Body bytes reach the delivery unchanged; at the end nothing refuses the message."""
    txn, delivery = transaction()
    body.pass_on(txn, CHECKED, OWNED)
    assert body.end(txn, CHECKED, None) is None
    assert delivery.body == OWNED and delivery.aborted == [] and txn.facts.size == len(OWNED)


def test_header_edits_apply_on_the_way():
    """The rule's header edits change what the delivery gets."""
    txn, delivery = transaction()
    txn.headers = HeaderRewriter(HeaderEdits(strip=frozenset({"subject"})))
    body.pass_on(txn, None, OWNED)
    assert body.end(txn, None, None) is None
    assert b"Subject" not in delivery.body and b"body\r\n" in delivery.body


def test_from_not_owned_sends_nothing_and_refuses():
    """A From: the app does not own: no byte goes on, the delivery is aborted, the end refuses."""
    txn, delivery = transaction()
    body.pass_on(txn, CHECKED, NOT_OWNED)
    body.pass_on(txn, CHECKED, b"more\r\n")
    assert delivery.body == b"" and delivery.aborted == [body.FROM_REFUSED]
    assert body.end(txn, CHECKED, None) == (FROM_NOT_OWNED, "apps.billing.check_from_header")


def test_message_that_is_all_header_is_checked_at_the_end():
    """No blank line before the dot: the From: check runs at the end of data."""
    txn, delivery = transaction()
    body.pass_on(txn, CHECKED, b"From: ceo@other.example\r\n")
    assert delivery.aborted == []
    assert body.end(txn, CHECKED, None) == (FROM_NOT_OWNED, "apps.billing.check_from_header")
    assert delivery.aborted[0] == body.FROM_REFUSED


def test_reader_error_refuses_with_its_limit():
    """An oversized or badly framed message is refused with the setting or rule it broke."""
    txn, delivery = transaction()
    body.failed(txn, replies.SIZE_EXCEEDED)
    assert delivery.aborted == [f"message refused by gateway: {replies.SIZE_EXCEEDED.text}"]
    assert body.end(txn, None, replies.SIZE_EXCEEDED) == (
        replies.SIZE_EXCEEDED,
        "listener.max_message_size",
    )
    txn, _ = transaction()
    assert body.end(txn, None, replies.BARE_LINE_ENDING) == (
        replies.BARE_LINE_ENDING,
        "data framing (RFC 5321)",
    )


def test_malformed_header_section_under_edits_is_refused_with_the_rule_key():
    """With header edits, a line starting with ':' refuses the message: nothing of that region
    goes on, the delivery is aborted, the limit names the edit and the reason the line."""
    txn, delivery = transaction()
    txn.headers = HeaderRewriter(HeaderEdits(None, frozenset({"received"})))
    body.pass_on(txn, None, b"Subject: x\r\n: y\r\nReceived: secret\r\n\r\nbody\r\n")
    assert delivery.body == b"" and delivery.aborted == [body.HEADERS_REFUSED]
    assert body.end(txn, None, None) == (replies.HEADERS_MALFORMED, "rules.strip_headers")
    assert txn.refusal_reason == "line 2 has an empty field name"


def test_malformed_header_section_without_checks_passes_unchanged():
    """No edit and no From check: nothing to bypass, the message goes on as sent."""
    txn, delivery = transaction()
    body.pass_on(txn, None, b"\r\nbody\r\n")
    assert body.end(txn, None, None) is None and delivery.body == b"\r\nbody\r\n"


def test_second_from_is_refused_with_its_own_reply():
    """Two From fields under the From: check: 550 5.6.0, limit the app's key."""
    txn, delivery = transaction()
    body.pass_on(txn, CHECKED, b"From: invoices@billing.example.com\r\nFrom: x@y\r\n\r\nb\r\n")
    assert body.end(txn, CHECKED, None) == (
        replies.FROM_NOT_SINGLE,
        "apps.billing.check_from_header",
    )
    assert delivery.aborted == [body.FROM_REFUSED]


def test_empty_message_under_edits_is_refused_at_the_end():
    """No line at all under rewrite_from: no header section, refused, no From added."""
    txn, delivery = transaction()
    txn.headers = HeaderRewriter(HeaderEdits("relay@corp.example"))
    assert body.end(txn, None, None) == (replies.HEADERS_MALFORMED, "rules.rewrite_from")
    assert delivery.body == b""
