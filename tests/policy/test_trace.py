"""gateway.policy.trace and the trace in HeaderRewriter: the fields' form, the loop count, without sockets."""

from __future__ import annotations

import email.parser
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from gateway.config.headers import HeaderEdits
from gateway.policy.headers import HeaderRewriter
from gateway.policy.trace import (
    MAX_RECEIVED,
    Trace,
    address_literal,
    date_field,
    message_id_field,
    protocol,
    received_field,
    safe_name,
)

WHEN = 1795829459.0  # Sat, 28 Nov 2026 01:30:59 +0000
RECEIVED = received_field(
    helo="app.test",
    client_ip="10.0.0.5",
    hostname="mailgate.test",
    with_="ESMTP",
    id_="ab12",
    when=WHEN,
)
TRACE = Trace(RECEIVED, date_field(WHEN), message_id_field("mailgate.test", WHEN, "f" * 20))
HEAD = b"From: app@example.com\r\nSubject: hi\r\n"
BODY = b"\r\nbody\r\n"


def run(
    message: bytes, trace: Trace | None = TRACE, edits: HeaderEdits | None = None
) -> tuple[bytes, HeaderRewriter]:
    """Feed `message` line by line; what the rewriter returned, and the rewriter."""
    rewriter = HeaderRewriter(edits, trace)
    lines = [line + b"\r\n" for line in message.split(b"\r\n")[:-1]]
    return b"".join(rewriter.feed(line) for line in lines) + rewriter.finish(), rewriter


def test_received_has_the_rfc5321_form_folded_with_crlf_and_a_tab():
    """from HELO ([ip]) / by host (mailgate) with ... id ...; / date: three CRLF lines."""
    assert RECEIVED == (
        b"Received: from app.test ([10.0.0.5])\r\n"
        b"\tby mailgate.test (mailgate) with ESMTP id ab12;\r\n"
        b"\tSat, 28 Nov 2026 01:30:59 +0000\r\n"
    )


def test_received_parses_as_one_field_with_the_date():
    """Python's email parser reads the folded field as one Received with its date."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        RECEIVED + HEAD + BODY
    )
    [received] = [" ".join(value.split()) for value in message.get_all("Received")]
    assert received.startswith("from app.test ([10.0.0.5]) by mailgate.test")
    assert received.endswith("; Sat, 28 Nov 2026 01:30:59 +0000")


def test_protocol_names_follow_rfc3848():
    """HELO: SMTP; EHLO: ESMTP; authenticated: ESMTPA; over TLS: ESMTPS / ESMTPSA."""
    assert protocol(esmtp=False, authenticated=False) == "SMTP"
    assert protocol(esmtp=True, authenticated=False) == "ESMTP"
    assert protocol(esmtp=True, authenticated=True) == "ESMTPA"
    assert protocol(esmtp=True, authenticated=False, tls=True) == "ESMTPS"
    assert protocol(esmtp=True, authenticated=True, tls=True) == "ESMTPSA"


def test_address_literals_follow_rfc5321():
    """IPv4 in brackets, IPv6 with the IPv6: tag, IPv4-mapped IPv6 as IPv4."""
    assert address_literal("192.0.2.1") == "[192.0.2.1]"
    assert address_literal("2001:DB8:0::1") == "[IPv6:2001:db8::1]"
    assert address_literal("::ffff:192.0.2.1") == "[192.0.2.1]"


@given(st.text(max_size=600))
def test_any_helo_gives_an_ascii_field_that_cannot_be_restructured(helo):
    """Whatever the app sent as HELO: ASCII, no blank, comment, semicolon or line break of its own."""
    field = received_field(
        helo=helo, client_ip="127.0.0.1", hostname="h", with_="ESMTP", id_="1", when=WHEN
    )
    name = safe_name(helo)
    assert field.isascii() and field.count(b"\r\n") == 3 and field.startswith(b"Received: from ")
    assert not set(name) & set(' \t()<>;\\"\r\n') and 0 < len(name) <= 255
    assert all(len(line) < 998 for line in field.split(b"\r\n"))


def test_message_id_is_unique_and_names_our_host():
    """Two Message-IDs made in the same second differ; both end in @hostname."""
    first, second = (message_id_field("mailgate.test", WHEN) for _ in range(2))
    assert first != second
    assert first.startswith(b"Message-ID: <20261128013059.") and first.endswith(
        b"@mailgate.test>\r\n"
    )


def test_received_is_prepended_and_the_rest_is_unchanged():
    """The trace's Received goes before the first line; a dated message is otherwise untouched."""
    dated = HEAD + b"Date: x\r\nMessage-ID: <a@b>\r\n" + BODY
    out, rewriter = run(dated)
    assert out == RECEIVED + dated and rewriter.added == ["Received"]


def test_missing_date_and_message_id_are_added_before_the_blank_line():
    """Both missing: Date then Message-ID at the end of the header section."""
    out, rewriter = run(HEAD + BODY, Trace(b"", TRACE.date, TRACE.message_id))
    assert out == HEAD + TRACE.date + TRACE.message_id + BODY
    assert rewriter.added == ["Date", "Message-ID"]
    assert rewriter.message_id == "<20261128013059." + "f" * 20 + "@mailgate.test>"


def test_present_fields_are_recognised_in_any_case_and_folded():
    """`date:` and a folded `MESSAGE-ID:` count as present: nothing added."""
    message = HEAD + b"date: x\r\nMESSAGE-ID:\r\n <a@b>\r\n" + BODY
    out, rewriter = run(message, Trace(b"", TRACE.date, TRACE.message_id))
    assert out == message and rewriter.added == [] and rewriter.message_id is None


def test_an_all_header_message_gets_its_additions_at_the_end():
    """A message that ends inside its header section gets Date and Message-ID after its last field."""
    out, rewriter = run(HEAD)
    assert out == RECEIVED + HEAD + TRACE.date + TRACE.message_id


def test_a_stripped_date_is_replaced():
    """strip_headers = ["Date"]: the message leaves without the app's Date, so ours is added."""
    out, rewriter = run(
        HEAD + b"Date: app's\r\n" + BODY, edits=HeaderEdits(strip=frozenset({"date"}))
    )
    assert b"Date: app's" not in out and TRACE.date in out


def test_without_edits_a_malformed_section_passes_with_only_the_received():
    """No edit applies: a malformed header section is not refused; nothing is added inside it."""
    message = b"Subject: x\r\nnot a field\r\n" + BODY
    out, rewriter = run(message)
    assert out == RECEIVED + message and not rewriter.stopped
    assert rewriter.added == ["Received"]


def test_an_empty_message_gets_only_the_received():
    """Nothing was sent: the Received alone (a header section with no end is not guessed at)."""
    rewriter = HeaderRewriter(None, TRACE)
    assert rewriter.finish() == RECEIVED and rewriter.added == ["Received"]


def test_received_fields_are_counted_and_the_31st_stops_the_message():
    """30 Received: passes; the 31st (folded, any case, or stripped) stops output: a loop."""
    hops = b"".join(b"received: from hop%d\r\n\tby x; date\r\n" % n for n in range(MAX_RECEIVED))
    _, passing = run(hops + HEAD + BODY)
    assert passing.received == MAX_RECEIVED and not passing.looped
    for edits in (None, HeaderEdits(strip=frozenset({"received"}))):
        looping = HeaderRewriter(edits, TRACE)
        out = looping.feed(hops + b"RECEIVED: one too many\r\n" + HEAD + BODY)
        assert looping.looped and looping.stopped and b"Subject" not in out
        assert looping.finish() == b""


def test_without_a_trace_received_fields_go_by_uncounted():
    """No trace (the rewriter's old use): nothing added, nothing counted."""
    out, rewriter = run(
        b"Received: a\r\n" + HEAD + BODY, trace=None, edits=HeaderEdits("r@x.example")
    )
    assert rewriter.received == 0 and rewriter.added == []


def test_most_added_is_the_octets_of_all_three_fields():
    """The upper bound the upstream's SIZE allows for."""
    assert TRACE.most_added == len(RECEIVED) + len(TRACE.date) + len(TRACE.message_id)
