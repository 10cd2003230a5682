"""The MAIL and RCPT lines an upstream is sent, for relay and queue alike."""

from __future__ import annotations

from gateway.outbound import envelope
from gateway.smtp import replies


def test_mail_line_is_the_senders_path_with_offered_parameters_only():
    """SIZE and BODY go out only where SIZE and 8BITMIME are offered; ASCII by default."""
    offered = {"SIZE": "", "8BITMIME": ""}
    line = envelope.mail_line("app@example.com", offered, size=10, body="8BITMIME")
    assert line == b"MAIL FROM:<app@example.com> SIZE=10 BODY=8BITMIME"
    assert envelope.mail_line("app@example.com", {}, size=10, body="7BIT") == (
        b"MAIL FROM:<app@example.com>"
    )


def test_the_null_sender_is_an_empty_path():
    """`<>` is sent as ``MAIL FROM:<>``."""
    assert envelope.mail_line("", {"SIZE": ""}, size=3) == b"MAIL FROM:<> SIZE=3"


def test_smtputf8_lines_are_utf8_and_say_so():
    """With SMTPUTF8 the MAIL line carries the parameter and both lines are UTF-8."""
    assert envelope.mail_line("jörg@example.com", {}, smtputf8=True) == (
        "MAIL FROM:<jörg@example.com> SMTPUTF8".encode()
    )
    assert (
        envelope.rcpt_line("zoë@example.net", smtputf8=True) == "RCPT TO:<zoë@example.net>".encode()
    )


def test_rcpt_line_keeps_the_address_byte_for_byte():
    """The text inside the brackets is exactly what policy saw (a quoted local part too)."""
    assert envelope.rcpt_line('"a b"@example.net') == b'RCPT TO:<"a b"@example.net>'


def test_control_characters_are_never_sendable():
    """CR, LF, NUL and DEL in an address are refused, whatever the upstream offers."""
    for bad in ("a@b\r\nRSET", "a\0@b", "a\x7f@b"):
        assert envelope.refusal(bad, {"SMTPUTF8": ""}) == replies.BAD_SPOOLED_ADDRESS
    assert envelope.unsendable("a@example.net") is None


def test_non_ascii_needs_the_upstreams_smtputf8():
    """A non-ASCII address is refused 553 5.6.7 unless the upstream offers SMTPUTF8."""
    assert envelope.refusal("jörg@example.net", {}) == replies.UPSTREAM_NO_SMTPUTF8
    assert envelope.refusal("jörg@example.net", {"SMTPUTF8": ""}) is None
    assert envelope.needs_smtputf8(["a@example.net", "jörg@example.net"])
    assert not envelope.needs_smtputf8(["a@example.net"])
