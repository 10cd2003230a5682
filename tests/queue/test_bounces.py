"""Delivery status notifications (RFC 3464): their fields, framing and who gets one."""

import email
import email.policy

from gateway.queue import bounces as dsn
from gateway.queue.spool import Envelope, RecipientState

HEADERS = b"From: app@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.com>\r\n"


def failed(
    address="bad@example.net", reply="550 5.1.1 No such user", expired=False
) -> RecipientState:
    return RecipientState(
        address,
        "up",
        status="failed",
        last_reply=reply,
        last_attempt=1_700_000_100.0,
        expired=expired,
    )


def envelope(sender="app@example.com", bounce_of=None) -> Envelope:
    return Envelope(
        id="0123456789abcdef",
        sender=sender,
        received=1_700_000_000.0,
        bounce_of=bounce_of,
        recipients=[failed()],
    )


def build(*recipients: RecipientState) -> bytes:
    return dsn.build(
        envelope(),
        recipients or [failed()],
        HEADERS,
        hostname="mailgate.test",
        dsn_id="fedcba9876543210",
        now=1_700_000_200.0,
    )


def test_status_comes_from_the_enhanced_code():
    """The Status field is the 5.x.x of the upstream's reply."""
    assert dsn.status_of(failed(reply="550 5.1.1 No such user")) == "5.1.1"


def test_status_without_enhanced_code_is_generic():
    """A reply without an enhanced code gives 5.0.0."""
    assert dsn.status_of(failed(reply="554 go away")) == "5.0.0"


def test_expired_recipient_has_status_5_4_7():
    """A recipient given up at max_age is reported as 5.4.7 (delivery time expired)."""
    assert dsn.status_of(failed(reply="451 4.4.1 Upstream unreachable", expired=True)) == "5.4.7"


def test_dsn_is_a_delivery_status_report():
    """The DSN parses as multipart/report with text, message/delivery-status and the original headers."""
    message = email.message_from_bytes(build(), policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["Auto-Submitted"] == "auto-replied" and message["To"] == "app@example.com"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


def test_dsn_names_each_failed_recipient():
    """Each failed recipient has Final-Recipient, Action: failed, Status and Diagnostic-Code."""
    body = build(failed(), failed("gone@example.net", "551 5.1.6 Moved"))
    for address, status, reply in (
        ("bad@example.net", "5.1.1", "550 5.1.1 No such user"),
        ("gone@example.net", "5.1.6", "551 5.1.6 Moved"),
    ):
        assert (
            f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; {reply}\r\n"
        ).encode() in body


def test_dsn_is_clean_smtp_content():
    """Only CRLF line endings, no line over 998 octets, ASCII only, even with a hostile reply text."""
    body = build(failed(reply="550 5.1.1 " + "\u00e9\r\nInjected: header " + "x" * 2000))
    assert body.count(b"\n") == body.count(b"\r\n") and b"\r\r" not in body
    assert max(len(line) for line in body.split(b"\r\n")) <= 998
    body.decode("ascii")
    assert b"\r\nInjected:" not in body


def test_no_dsn_for_null_sender_or_a_dsn():
    """A message from <> or a DSN itself never gets a DSN."""
    assert dsn.wants_bounce(envelope()) is True
    assert dsn.wants_bounce(envelope(sender="")) is False
    assert dsn.wants_bounce(envelope(bounce_of="0011223344556677")) is False
