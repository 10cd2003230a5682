"""Unit tests of gateway/replies.py: reply values, their wire form and the incremental parser."""

from __future__ import annotations

import pytest

from gateway.smtp import replies
from gateway.smtp.replies import (
    MalformedReply,
    Reply,
    ReplyParser,
    counts_as_error,
    default_enhanced,
)

# --- Reply values and wire form ------------------------------------------------------------


def test_single_line_wire_form() -> None:
    """A one-line reply is `code SP enhanced SP text CRLF`."""
    assert Reply(250, "2.1.0", "Sender OK").to_bytes() == b"250 2.1.0 Sender OK\r\n"


def test_multi_line_wire_form_repeats_enhanced_code() -> None:
    """Each line of a multi-line reply has the code, a hyphen but the last, the enhanced code."""
    reply = Reply(451, "4.4.1", "first\nsecond\nthird")
    assert reply.to_bytes() == (b"451-4.4.1 first\r\n451-4.4.1 second\r\n451 4.4.1 third\r\n")


def test_wire_form_without_enhanced_code() -> None:
    """A reply with no enhanced code (354) is `code SP text`."""
    assert replies.START_DATA.to_bytes() == b"354 End data with <CR><LF>.<CR><LF>\r\n"


def test_wire_form_of_empty_text_has_no_trailing_space() -> None:
    """An empty text gives `code SP enhanced` with no trailing blank."""
    assert Reply(250, "2.0.0", "").to_bytes() == b"250 2.0.0\r\n"


def test_wire_form_is_ascii_even_for_non_ascii_text() -> None:
    """Non-ASCII text is replaced, so the wire form is always ASCII."""
    wire = Reply(550, "5.7.1", "refusé").to_bytes()
    assert wire.isascii() and wire.endswith(b"\r\n")


def test_wire_form_has_no_control_characters() -> None:
    """Control characters in a reply's text (say, an upstream's) never reach the wire; HT is kept."""
    assert Reply(550, "5.0.0", "a\rb\x00c\x1bd\te\x7f").to_bytes() == b"550 5.0.0 a?b?c?d\te?\r\n"


def test_upstream_bare_cr_not_relayed() -> None:
    """A bare CR inside an upstream's reply line is not in the wire form passed on to the app."""
    (reply,) = ReplyParser().feed(b"250 ok\rINJECTED\r\n")
    assert reply.to_bytes().count(b"\r") == 1


def test_reply_classes() -> None:
    """is_positive / is_transient / is_permanent follow the first digit of the code."""
    assert Reply(354, "", "go").is_positive and not Reply(354, "", "go").is_transient
    assert Reply(451, "4.4.1", "x").is_transient and not Reply(451, "4.4.1", "x").is_permanent
    assert Reply(554, "5.7.1", "x").is_permanent and not Reply(554, "5.7.1", "x").is_positive


def test_with_text_keeps_codes() -> None:
    """with_text changes only the text, keeping code and enhanced code."""
    assert replies.BAD_ADDRESS.with_text("nope") == Reply(501, "5.1.3", "nope")


def test_str_is_one_line() -> None:
    """str() of a multi-line reply is one line, for logs."""
    assert str(Reply(250, "2.0.0", "a\nb")) == "250 2.0.0 a / b"


def test_default_enhanced() -> None:
    """default_enhanced gives X.0.0 for the reply's class."""
    assert [default_enhanced(c) for c in (250, 451, 554)] == ["2.0.0", "4.0.0", "5.0.0"]


def _constants() -> list[tuple[str, Reply]]:
    return [(name, value) for name, value in vars(replies).items() if isinstance(value, Reply)]


@pytest.mark.parametrize(("name", "reply"), _constants(), ids=[n for n, _ in _constants()])
def test_defined_replies_are_well_formed(name: str, reply: Reply) -> None:
    """Each reply constant: valid code, enhanced code of its class (3xx none: RFC 3463 has no
    class 3), one ASCII line."""
    assert 200 <= reply.code <= 599
    if reply.code // 100 == 3:
        assert reply.enhanced == ""
    else:
        klass, subject, detail = reply.enhanced.split(".")
        assert int(klass) == reply.code // 100
        assert subject.isdigit() and detail.isdigit()
    wire = reply.to_bytes()
    assert wire.isascii() and wire.count(b"\r\n") == 1 and wire.endswith(b"\r\n")


# --- ReplyParser ----------------------------------------------------------------------------


def test_parser_single_line() -> None:
    """A complete single-line reply is returned with its enhanced code split off."""
    assert ReplyParser().feed(b"250 2.1.5 Recipient OK\r\n") == [
        Reply(250, "2.1.5", "Recipient OK")
    ]


def test_parser_multi_line() -> None:
    """A multi-line reply comes out as one Reply whose text has one line per wire line."""
    parsed = ReplyParser().feed(b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    assert parsed == [Reply(250, None, "mx.example\nPIPELINING\nSTARTTLS")]


def test_parser_multi_line_with_enhanced_codes() -> None:
    """The enhanced code is taken from the first line and stripped from every line."""
    parsed = ReplyParser().feed(b"550-5.7.1 no\r\n550 5.7.1 really\r\n")
    assert parsed == [Reply(550, "5.7.1", "no\nreally")]


def test_parser_enhanced_code_of_other_class_is_text() -> None:
    """An enhanced code of another class than the reply is not taken as its enhanced code."""
    assert ReplyParser().feed(b"250 5.0.0 odd\r\n") == [Reply(250, None, "5.0.0 odd")]


def test_parser_keeps_a_missing_enhanced_code_missing() -> None:
    """A reply without an enhanced code has None, not a made-up generic one."""
    assert ReplyParser().feed(b"421 closing\r\n") == [Reply(421, None, "closing")]


@pytest.mark.parametrize(
    "wire",
    [b"334 \r\n", b"334 VXNlcm5hbWU6\r\n", b"334 3.0.0 odd\r\n", b"354 go ahead\r\n"],
)
def test_parser_never_invents_an_enhanced_code_for_3xx(wire: bytes) -> None:
    """A 3xx has no RFC 3463 class: its enhanced code is None, never "3.0.0"."""
    [reply] = ReplyParser().feed(wire)
    assert reply.enhanced is None


def test_parser_takes_the_enhanced_code_the_server_sent_on_a_later_line() -> None:
    """An enhanced code only on a later line of a multi-line reply is still the server's."""
    [reply] = ReplyParser().feed(b"535-first\r\n535 5.7.8 second\r\n")
    assert (reply.enhanced, reply.text) == ("5.7.8", "first\nsecond")


def test_codes_names_only_what_is_there() -> None:
    """`codes` is "code enhanced", or the code alone when there is no enhanced code."""
    assert [Reply(535, "5.7.8", "x").codes, Reply(334, None, "").codes] == ["535 5.7.8", "334"]
    assert str(Reply(550, None, "no")) == "550 no"


def test_with_default_enhanced_fills_in_only_a_missing_code() -> None:
    """The app's copy of a reply without an enhanced code gets X.0.0; 3xx and present codes stay."""
    assert Reply(550, None, "no").with_default_enhanced() == Reply(550, "5.0.0", "no")
    assert Reply(550, "5.1.1", "no").with_default_enhanced() == Reply(550, "5.1.1", "no")
    assert Reply(354, None, "go").with_default_enhanced() == Reply(354, None, "go")


def test_parser_bare_code() -> None:
    """A line of only the three digits is a complete reply with empty text."""
    assert ReplyParser().feed(b"250\r\n") == [Reply(250, None, "")]


def test_parser_accepts_bare_lf() -> None:
    """A server ending lines with bare LF is still understood."""
    assert ReplyParser().feed(b"220 ready\n") == [Reply(220, None, "ready")]


def test_parser_several_replies_in_one_feed() -> None:
    """Pipelined replies arriving together come out in order."""
    parsed = ReplyParser().feed(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert [r.code for r in parsed] == [250, 250, 354]


STREAM = b"220 hi\r\n250-mx\r\n250-SIZE 100\r\n250 8BITMIME\r\n550 5.1.1 unknown user\r\n"
EXPECTED = [
    Reply(220, None, "hi"),
    Reply(250, None, "mx\nSIZE 100\n8BITMIME"),
    Reply(550, "5.1.1", "unknown user"),
]


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_parser_split_anywhere(split: int) -> None:
    """Feeding a stream in two parts split at any position gives the same replies."""
    parser = ReplyParser()
    assert parser.feed(STREAM[:split]) + parser.feed(STREAM[split:]) == EXPECTED


def test_parser_byte_by_byte() -> None:
    """Feeding one byte at a time gives the same replies as feeding everything at once."""
    parser = ReplyParser()
    parsed = [reply for i in range(len(STREAM)) for reply in parser.feed(STREAM[i : i + 1])]
    assert parsed == EXPECTED


def test_pending_empty_after_complete_reply() -> None:
    """Nothing is pending once every reply is complete."""
    parser = ReplyParser()
    parser.feed(b"220 ready\r\n")
    assert parser.pending == b""


def test_pending_holds_partial_line() -> None:
    """A partial line is pending, byte for byte."""
    parser = ReplyParser()
    parser.feed(b"220 rea")
    assert parser.pending == b"220 rea"


def test_pending_is_the_bytes_received() -> None:
    """Pending is exactly the bytes of the incomplete multi-line reply, codes included."""
    parser = ReplyParser()
    assert parser.feed(b"250-a\r\n250-b\r\n250 c") == []
    assert parser.pending == b"250-a\r\n250-b\r\n250 c"


@pytest.mark.parametrize(
    "line",
    [b"hello\r\n", b"25\r\n", b"2x0 no\r\n", b"250x text\r\n", b"\r\n", b"250\tx\r\n"],
    ids=["text", "short", "not-digits", "bad-separator", "empty", "tab-separator"],
)
def test_parser_malformed_line(line: bytes) -> None:
    """A line that is not `DDD`, `DDD text` or `DDD-text` raises MalformedReply."""
    with pytest.raises(MalformedReply):
        ReplyParser().feed(line)


def test_parser_code_change_inside_multi_line() -> None:
    """A multi-line reply whose code changes between lines raises MalformedReply."""
    with pytest.raises(MalformedReply):
        ReplyParser().feed(b"250-a\r\n251 b\r\n")


def test_parser_too_many_lines() -> None:
    """A multi-line reply longer than max_lines raises MalformedReply."""
    with pytest.raises(MalformedReply):
        ReplyParser(max_lines=3).feed(b"250-a\r\n" * 4 + b"250 end\r\n")


def test_parser_partial_line_too_long() -> None:
    """An unterminated line growing beyond max_line raises MalformedReply."""
    with pytest.raises(MalformedReply):
        ReplyParser(max_line=10).feed(b"250 " + b"x" * 20)


def test_parser_complete_line_too_long() -> None:
    """A line longer than max_line raises MalformedReply even when complete in one read."""
    with pytest.raises(MalformedReply):
        ReplyParser(max_line=10).feed(b"250 " + b"x" * 20 + b"\r\n")


def test_parser_line_of_max_length_accepted() -> None:
    """A line of exactly max_line octets before its line ending is accepted."""
    line = b"250 " + b"x" * 6
    assert ReplyParser(max_line=10).feed(line + b"\r\n") == [Reply(250, None, "x" * 6)]


@pytest.mark.parametrize("split", range(1, 14))
def test_parser_line_of_max_length_accepted_split_anywhere(split: int) -> None:
    """A line of exactly max_line octets is accepted wherever reads split it, even after its CR."""
    parser = ReplyParser(max_line=10)
    wire = b"250 " + b"x" * 6 + b"\r\n"
    assert parser.feed(wire[:split]) + parser.feed(wire[split:]) == [Reply(250, None, "x" * 6)]


@pytest.mark.parametrize("code", [b"000", b"099", b"199", b"600", b"999"])
def test_parser_code_outside_2xx_to_5xx(code: bytes) -> None:
    """A reply code whose first digit is not 2 to 5 (RFC 5321 4.2) raises MalformedReply."""
    with pytest.raises(MalformedReply):
        ReplyParser().feed(code + b" text\r\n")


def test_every_fixed_reply_is_defined_in_the_replies_module():
    """No module but gateway/smtp/replies.py builds a Reply from literal code, enhanced code and text.

    (A reply made from the upstream's words or the host name, like the banner, is not a fixed one.)
    """
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "gateway"
    built = re.compile(r'\bReply\(\s*\d{3}\s*,\s*"[^"]*"\s*,\s*"[^"]*"\s*\)')
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "replies.py" and path.parent.name != "testing"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if built.search(line)
    ]
    assert offenders == []


def test_what_counts_toward_max_errors():
    """Every 5xx; a 4xx only to RCPT, and not 452 4.5.3 (send the rest in another transaction)."""
    assert counts_as_error(replies.SYNTAX_UNKNOWN, b"NOOP")
    assert counts_as_error(replies.UPSTREAM_UNREACHABLE, b"RCPT")
    assert counts_as_error(replies.RATE_LIMITED, b"RCPT")
    assert not counts_as_error(replies.UPSTREAM_UNREACHABLE, b"DATA")
    assert not counts_as_error(replies.TOO_MANY_RECIPIENTS, b"RCPT")
    assert not counts_as_error(replies.OTHER_ROUTE, b"RCPT")
    assert not counts_as_error(replies.TOO_MANY_RCPT_COMMANDS, b"RCPT")
    assert not counts_as_error(replies.OK, b"RCPT")
