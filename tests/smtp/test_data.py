"""Unit tests of gateway/data.py: DATA framing, validation, dot-stuffing, the audit's facts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from gateway.smtp import replies
from gateway.smtp.data import MAX_LINE, DataReader, MessageFacts, dot_stuff
from gateway.smtp.header_section import MAX_HEADER_SECTION
from gateway.smtp.replies import Reply

BIG = 10**9


@dataclass
class Outcome:
    """Everything a DataReader produced over a sequence of feeds."""

    content: bytes
    done: bool
    leftover: bytes
    error: Reply | None


def read(chunks: Iterable[bytes], max_size: int = BIG) -> Outcome:
    """Feed `chunks` to a new DataReader; leftover: all after the end of data, unread chunks too."""
    reader = DataReader(max_size)
    content: list[bytes] = []
    leftover = b""
    pieces = list(chunks)
    for i, chunk in enumerate(pieces):
        feed = reader.feed(chunk)
        content.extend(feed.content)
        if feed.done:
            leftover = feed.leftover + b"".join(pieces[i + 1 :])
            break
    return Outcome(b"".join(content), reader.done, leftover, reader.error)


def splits(stream: bytes) -> Iterable[list[bytes]]:
    """The stream whole, then split in two at every position."""
    yield [stream]
    for i in range(1, len(stream)):
        yield [stream[:i], stream[i:]]


# --- the terminator ---------------------------------------------------------------------------


def test_simple_message() -> None:
    """A body of CRLF lines followed by `.CRLF` is returned without the terminator."""
    outcome = read([b"Subject: hi\r\n\r\nbody\r\n.\r\n"])
    assert outcome == Outcome(b"Subject: hi\r\n\r\nbody\r\n", True, b"", None)


def test_empty_message() -> None:
    """`.CRLF` right after DATA (CRLF.CRLF at the very start) ends an empty message."""
    assert read([b".\r\n"]) == Outcome(b"", True, b"", None)


def test_terminator_split_at_every_position() -> None:
    """The end of data is found wherever the reads split the stream."""
    stream = b"a\r\nb\r\n.\r\nQUIT\r\n"
    for chunks in splits(stream):
        assert read(chunks) == Outcome(b"a\r\nb\r\n", True, b"QUIT\r\n", None), chunks


def test_byte_by_byte() -> None:
    """Feeding one byte at a time gives the same content and leftover as one feed."""
    stream = b"line one\r\n..dotted\r\n.\r\nRSET\r\n"
    assert read([stream[i : i + 1] for i in range(len(stream))]) == read([stream])


def test_not_done_without_terminator() -> None:
    """Without `CRLF.CRLF` the reader is not done and holds no error."""
    reader = DataReader(BIG)
    feed = reader.feed(b"a\r\nb\r\n")
    assert not feed.done and not reader.done and reader.error is None


@pytest.mark.parametrize(
    "stream",
    [b"a\n.\n", b"a\r\n.\n", b"a\n.\r\n", b"a\r.\r\n", b"a\r\n.\r", b"a\r\n. \r\n", b"a\r\n.x\r\n"],
    ids=[
        "lf-dot-lf",
        "crlf-dot-lf",
        "lf-dot-crlf",
        "cr-dot-crlf",
        "crlf-dot-cr",
        "dot-space",
        "dot-text",
    ],
)
def test_only_crlf_dot_crlf_terminates(stream: bytes) -> None:
    """No line-ending variant other than CRLF.CRLF ends the data."""
    assert not read([stream]).done


def test_leftover_returned_for_pipelining() -> None:
    """Bytes after the terminator are returned untouched as leftover (pipelined commands)."""
    outcome = read([b"x\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA"])
    assert outcome.leftover == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA"


def test_leftover_of_empty_message() -> None:
    """Leftover after an empty message is returned too."""
    assert read([b".\r\nQUIT\r\n"]).leftover == b"QUIT\r\n"


def test_feed_after_done_refused() -> None:
    """Feeding a finished reader is a programming error, not silently accepted."""
    reader = DataReader(BIG)
    reader.feed(b".\r\n")
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# --- dot-unstuffing -------------------------------------------------------------------------


def test_leading_dot_removed() -> None:
    """A line starting with `..` loses its first dot (RFC 5321 4.5.2)."""
    assert read([b"..hidden\r\nx\r\n...two\r\n.\r\n"]).content == b".hidden\r\nx\r\n..two\r\n"


def test_leading_dot_of_first_line_removed() -> None:
    """The transparency dot of the very first line is removed too."""
    assert read([b"..\r\n.\r\n"]).content == b".\r\n"


def test_dot_not_at_line_start_kept() -> None:
    """Dots inside a line are content."""
    assert read([b"a.b\r\n a..\r\n.\r\n"]).content == b"a.b\r\n a..\r\n"


def test_unstuffing_across_every_split() -> None:
    """Unstuffing gives the same content wherever the reads split the stream."""
    stream = b"..a\r\n..\r\nb\r\n...c\r\n.\r\n"
    for chunks in splits(stream):
        assert read(chunks).content == b".a\r\n.\r\nb\r\n..c\r\n", chunks


# --- refused data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"bare\nlf\r\n",
        b"bare\rcr\r\n",
        b"nul\x00byte\r\n",
        b"cr-cr-lf\r\r\n",
        b"lf-cr\n\r\n",
        b"\n",
    ],
    ids=["bare-lf", "bare-cr", "nul", "cr-cr-lf", "lf-cr", "only-lf"],
)
def test_bare_line_ending_or_nul_refused(body: bytes) -> None:
    """Bare CR, bare LF or NUL anywhere in the data is refused with 550 5.5.2."""
    outcome = read([b"ok\r\n" + body + b"more\r\n.\r\n"])
    assert outcome.error == replies.BARE_LINE_ENDING and outcome.done


def test_nothing_emitted_after_error() -> None:
    """Once the data is refused no more content is emitted."""
    reader = DataReader(BIG)
    reader.feed(b"bad\nline\r\n")
    assert reader.feed(b"later\r\n").content == [] and reader.feed(b"x\r\n.\r\n").content == []


def test_error_discards_until_real_terminator() -> None:
    """After a refusal all up to the real CRLF.CRLF is discarded; what follows is leftover."""
    outcome = read([b"a\nb\r\n.\n", b"RSET\r\n", b"x\r\n.\r\nQUIT\r\n"])
    assert (
        outcome.done
        and outcome.leftover == b"QUIT\r\n"
        and outcome.error == replies.BARE_LINE_ENDING
    )


def test_smuggled_terminator_not_honoured_after_error() -> None:
    """`LF.CRLF` after a refusal does not end the data: the smuggled commands are discarded."""
    outcome = read([b"x\r\n\n.\r\nMAIL FROM:<evil@example>\r\n.\r\nQUIT\r\n"])
    assert outcome.done and outcome.leftover == b"QUIT\r\n"


def test_discarding_finds_terminator_across_every_split() -> None:
    """While discarding, the terminator is found wherever the reads split it."""
    stream = b"bad\rline\r\nmore\r\n.\r\nQUIT\r\n"
    for chunks in splits(stream):
        outcome = read(chunks)
        assert (outcome.done, outcome.leftover, outcome.content) == (True, b"QUIT\r\n", b""), chunks


def test_error_then_immediate_terminator() -> None:
    """A refused line directly followed by `.CRLF` in a later read ends the data there."""
    outcome = read([b"a\nb\r\n", b".\r\nNOOP\r\n"])
    assert outcome.done and outcome.leftover == b"NOOP\r\n"


# --- line length ------------------------------------------------------------------------------


def test_line_of_1000_octets_accepted() -> None:
    """A line of exactly 1000 octets including CRLF is accepted."""
    line = b"x" * (MAX_LINE - 2) + b"\r\n"
    assert read([line + b".\r\n"]) == Outcome(line, True, b"", None)


def test_line_of_1001_octets_refused() -> None:
    """A line of 1001 octets including CRLF is refused with 550 5.5.2."""
    outcome = read([b"x" * (MAX_LINE - 1) + b"\r\n.\r\n"])
    assert outcome.error == replies.DATA_LINE_TOO_LONG and outcome.done and outcome.content == b""


def test_line_limit_across_every_split() -> None:
    """1000 octets pass and 1001 fail wherever the reads split the line."""
    good = b"x" * (MAX_LINE - 2) + b"\r\n.\r\n"
    bad = b"x" * (MAX_LINE - 1) + b"\r\n.\r\n"
    for i in range(1, len(good)):
        assert read([good[:i], good[i:]]).error is None, i
    for i in range(1, len(bad)):
        assert read([bad[:i], bad[i:]]).error == replies.DATA_LINE_TOO_LONG, i


def test_stuffed_line_of_1000_octets_accepted() -> None:
    """A 1000-octet line sent stuffed (1001 on the wire) is accepted: the added dot does not count."""
    line = b"." + b"d" * (MAX_LINE - 3) + b"\r\n"
    assert read([b"." + line + b".\r\n"]) == Outcome(line, True, b"", None)


def test_stuffed_line_of_1001_octets_refused() -> None:
    """A 1001-octet line sent dot-stuffed (1002 octets on the wire) is refused."""
    outcome = read([b".." + b"d" * (MAX_LINE - 2) + b"\r\n.\r\n"])
    assert outcome.error == replies.DATA_LINE_TOO_LONG


def test_stuffed_line_limit_across_every_split() -> None:
    """The added dot is not counted wherever reads split the line, also after a complete line."""
    stream = b"ok\r\n.." + b"d" * (MAX_LINE - 3) + b"\r\n.\r\n"
    for chunks in splits(stream):
        assert read(chunks).error is None, [len(c) for c in chunks]


def test_line_limit_wherever_the_line_lies_in_a_read() -> None:
    """Lines of 999 to 1002 octets among short lines, at every offset of a read: refused
    exactly when over 1000 octets (the reader looks at windows of the read, not lines)."""
    for length in range(MAX_LINE - 1, MAX_LINE + 3):
        line = b"y" * (length - 2) + b"\r\n"
        for offset in range(0, 2 * MAX_LINE, 7):
            head = b"h" * (offset % 90) + b"\r\n" + b"s\r\n" * (offset // 3)
            outcome = read([head + line + b"short\r\n" * 200 + b".\r\n"])
            expected = replies.DATA_LINE_TOO_LONG if length > MAX_LINE else None
            assert outcome.error == expected, (length, offset)


def test_long_line_in_the_middle_refused() -> None:
    """An over-long line between short lines is found."""
    outcome = read([b"short\r\n" + b"y" * 2000 + b"\r\nshort\r\n.\r\n"])
    assert outcome.error == replies.DATA_LINE_TOO_LONG


def test_endless_line_refused_early() -> None:
    """A line that never ends is refused as soon as it passes the limit, before any line ending."""
    reader = DataReader(BIG)
    reader.feed(b"z" * 600)
    assert reader.error is None
    reader.feed(b"z" * 600)
    assert reader.error == replies.DATA_LINE_TOO_LONG


def test_endless_line_after_complete_line_refused_early() -> None:
    """An unterminated over-long line after a complete line in one read is refused at once."""
    reader = DataReader(BIG)
    feed = reader.feed(b"ok\r\n" + b"z" * MAX_LINE)
    assert reader.error == replies.DATA_LINE_TOO_LONG and feed.content == []


def test_long_line_not_executed_as_commands() -> None:
    """After an over-long line, body lines are discarded, never handed back as commands."""
    outcome = read([b"a" * 5000 + b"\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n.\r\nQUIT\r\n"])
    assert outcome.leftover == b"QUIT\r\n" and outcome.content == b""


# --- size -------------------------------------------------------------------------------------


def test_size_at_limit_accepted() -> None:
    """A message of exactly max_size octets (after unstuffing) is accepted."""
    body = b"12345678\r\n"
    assert read([b"." + body + b".\r\n"], max_size=len(body)).error is None


def test_size_over_limit_refused() -> None:
    """A message one octet over max_size is refused with 552 5.3.4."""
    body = b"123456789\r\n"
    outcome = read([body + b".\r\n"], max_size=len(body) - 1)
    assert outcome.error == replies.SIZE_EXCEEDED and outcome.done


def test_size_counted_across_feeds() -> None:
    """The size limit applies to the sum of all reads; the rest is discarded to the terminator."""
    outcome = read([b"a" * 98 + b"\r\n"] * 5 + [b".\r\nQUIT\r\n"], max_size=300)
    assert outcome.error == replies.SIZE_EXCEEDED and outcome.leftover == b"QUIT\r\n"
    assert len(outcome.content) <= 300


# --- bounded buffering ------------------------------------------------------------------------


def test_buffer_bounded_while_reading() -> None:
    """Between reads the reader holds at most one partial line (< 1000 octets)."""
    reader = DataReader(BIG)
    for _ in range(200):
        reader.feed(b"w" * 499 + b"\r\n" + b"p" * 300)
        reader.feed(b"\r\n")
        assert len(reader._buffer) < MAX_LINE


def test_buffer_bounded_while_discarding() -> None:
    """While discarding after an error the reader keeps no more than a few octets."""
    reader = DataReader(BIG)
    reader.feed(b"bad\n")
    for _ in range(100):
        reader.feed(b"q" * 10000)
        assert len(reader._buffer) + len(reader._tail) <= 4


# --- dot_stuff ------------------------------------------------------------------------------


def test_dot_stuff_doubles_leading_dots() -> None:
    """dot_stuff adds a dot to every line that starts with one, the first line included."""
    assert dot_stuff(b".a\r\nb\r\n..c\r\n.\r\n") == b"..a\r\nb\r\n...c\r\n..\r\n"


def test_dot_stuff_leaves_other_dots() -> None:
    """Dots not at a line start are left alone."""
    assert dot_stuff(b"a.b\r\nc.\r\n") == b"a.b\r\nc.\r\n"


STUFFED_STREAM = b"..first\r\nplain\r\n..\r\n...x\r\n\r\n..y\r\nend.\r\n.\r\n"


def test_dot_stuff_exact_across_every_chunking() -> None:
    """Re-stuffing the reader's output gives the client's stuffed body, wherever reads split it."""
    for chunks in splits(STUFFED_STREAM):
        reader = DataReader(BIG)
        out = b"".join(dot_stuff(c) for chunk in chunks for c in reader.feed(chunk).content)
        assert out == STUFFED_STREAM[: -len(b".\r\n")], chunks


def test_dot_stuff_exact_in_three_pieces() -> None:
    """Re-stuffing is exact for every split of the stream into three reads."""
    stream = STUFFED_STREAM
    for i in range(1, len(stream)):
        for j in range(i + 1, len(stream)):
            reader = DataReader(BIG)
            out = b"".join(
                dot_stuff(c)
                for chunk in (stream[:i], stream[i:j], stream[j:])
                for c in reader.feed(chunk).content
            )
            assert out == stream[:-3], (i, j)


def test_content_regions_are_whole_lines() -> None:
    """Every content piece the reader emits starts at a line start and ends with CRLF."""
    stream = b"abc\r\ndef\r\n..g\r\n.\r\n"
    for chunks in splits(stream):
        reader = DataReader(BIG)
        for chunk in chunks:
            for piece in reader.feed(chunk).content:
                assert piece.endswith(b"\r\n"), chunks


# --- MessageFacts -----------------------------------------------------------------------------


MESSAGE = (
    b"From: App <app@example.com>\r\n"
    b"Message-ID: <1234@app.example.com>\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"Message-ID: <not-a-header@body>\r\n"
)


def test_facts_size_and_sha256() -> None:
    """size and sha256 cover all content, however it was split."""
    facts = MessageFacts()
    for i in range(0, len(MESSAGE), 7):
        facts.update(MESSAGE[i : i + 7])
    assert facts.size == len(MESSAGE) and facts.sha256 == hashlib.sha256(MESSAGE).hexdigest()


def test_facts_message_id() -> None:
    """message_id is the header's value, taken from the header section only."""
    facts = MessageFacts()
    facts.update(MESSAGE)
    assert facts.message_id == "<1234@app.example.com>"


def test_facts_from() -> None:
    """header_from is the From header's value."""
    facts = MessageFacts()
    facts.update(MESSAGE)
    assert facts.header_from == "App <app@example.com>"


def test_facts_header_name_case_insensitive() -> None:
    """Header names are matched case-insensitively."""
    facts = MessageFacts()
    facts.update(b"MESSAGE-id: <x@y>\r\n\r\n")
    assert facts.message_id == "<x@y>"


def test_facts_folded_message_id() -> None:
    """A Message-ID folded onto the next line is unfolded."""
    facts = MessageFacts()
    facts.update(b"Message-ID:\r\n <folded@example.com>\r\nSubject: x\r\n\r\nbody\r\n")
    assert facts.message_id == "<folded@example.com>"


def test_facts_folded_from() -> None:
    """A From header folded over lines is unfolded into one value."""
    facts = MessageFacts()
    facts.update(b"From: A Long Name\r\n\t<a@example.com>\r\n\r\n")
    assert facts.header_from == "A Long Name <a@example.com>"


def test_facts_no_message_id() -> None:
    """Without a Message-ID header, message_id is None (a body line does not count)."""
    facts = MessageFacts()
    facts.update(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n")
    assert facts.message_id is None


def test_facts_empty_header_section() -> None:
    """A message starting with a blank line has no headers at all."""
    facts = MessageFacts()
    facts.update(b"\r\nMessage-ID: <body@x>\r\n")
    assert facts.message_id is None


def test_facts_header_split_across_updates() -> None:
    """A header split over several pieces of content is still found."""
    facts = MessageFacts()
    for piece in (b"Subject: a\r\nMess", b"age-ID: <sp", b"lit@x>\r\n", b"\r\nbody\r\n"):
        facts.update(piece)
    assert facts.message_id == "<split@x>"


def test_facts_read_the_whole_header_section_in_bounded_memory() -> None:
    """Fields after 64 KiB of headers are still read (every From counts), and what the facts
    keep stays bounded: no header text but the first Message-ID and From values."""
    facts = MessageFacts()
    for _ in range(65536 // 1000 + 2):
        facts.update(b"X-Filler: " + b"f" * 988 + b"\r\n")
    facts.update(b"Message-ID: <late@x>\r\nFrom: a@x\r\nFROM:b@y\r\n\r\nbody\r\n")
    assert facts.message_id == "<late@x>" and facts.header_from == "a@x"
    assert facts.from_count == 2 and facts.section.problem is None
    assert sum(map(len, facts._values.values())) < 100 and facts._partial == b""


def test_facts_header_section_past_its_cap_is_malformed() -> None:
    """Past MAX_HEADER_SECTION octets the section is done and says why (the checks refuse)."""
    facts = MessageFacts()
    line = b"X-Filler: " + b"f" * 988 + b"\r\n"
    for _ in range(MAX_HEADER_SECTION // len(line) + 1):
        facts.update(line)
    assert facts.headers_done and facts.section.too_big
    facts.update(b"From: late@x\r\n\r\n")
    assert facts.from_count == 0


def test_facts_invalid_utf8_replaced() -> None:
    """A header value that is not UTF-8 is decoded with replacement characters, never raising."""
    facts = MessageFacts()
    facts.update(b"From: \xff\xfe <a@b>\r\n\r\n")
    assert facts.header_from == "\ufffd\ufffd <a@b>"
