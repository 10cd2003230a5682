"""Issue 4, class 7: property-based fuzzing of the command, address and reply parsers and DATA.

What these prevent: a parser that lets an unexpected exception escape (the
listener would drop the session with no SMTP reply, or worse, leave it in an
undefined state), a refusal that is not a well-formed SMTP reply, and a DATA
reader whose output differs from what the client meant to send (smuggling,
truncation, or a body the upstream receives changed). Examples stay few so the
file runs in seconds; a failure prints the minimal example to reproduce it.
"""

from __future__ import annotations

import itertools
import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.smtp.address import MAX_PATH, AddressError, parse_path
from gateway.smtp.commands import CommandError, parse_command, parse_mail, parse_rcpt
from gateway.smtp.data import MAX_LINE, DataReader, dot_stuff
from gateway.smtp.replies import MalformedReply, Reply, ReplyParser

# Few examples by default, so the suite stays fast; MAILGATE_FUZZ_EXAMPLES=5000 searches harder.
_EXAMPLES = int(os.environ.get("MAILGATE_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    max_examples=_EXAMPLES or 100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_DATA = settings(
    max_examples=_EXAMPLES or 80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Pieces of the SMTP grammar, so random text reaches deep into the parsers rather than
# failing at the first character; mixed with arbitrary characters (non-ASCII, controls).
GRAMMAR = [
    "<",
    ">",
    "@",
    '"',
    "\\",
    ":",
    " ",
    ".",
    ",",
    "[",
    "]",
    "IPv6:",
    "::1",
    "1.2.3.4",
    "%",
    "!",
    "FROM:",
    "TO:",
    "from:",
    "SIZE=",
    "BODY=",
    "7BIT",
    "8BITMIME",
    "=",
    "-",
    "0",
    "9",
    "a",
    "Z",
    "example.com",
    "\t",
    "\u00e9",
    "\u00b2",
    "\u0661",
    "\x00",
    "\r",
    "\n",
    "\ufffd",
]
GRAMMAR_TEXT = st.lists(st.one_of(st.sampled_from(GRAMMAR), st.text(max_size=4)), max_size=30).map(
    "".join
)
TEXT = st.one_of(st.text(max_size=120), GRAMMAR_TEXT)
# Whole MAIL/RCPT arguments, mostly well-formed so that the parameter code is reached, with
# a mutation here and there: odd keywords, odd paths, blanks that must not pass for SP,
# Unicode "digits" in SIZE.
VALID_MAILBOX = st.sampled_from(
    ["a@b.example", '"q r"@b.example', "x@[192.0.2.1]", "y@[IPv6:2001:db8::1]", "u%v@w.example", ""]
)
MAILBOX = st.one_of(VALID_MAILBOX, GRAMMAR_TEXT, st.just("@r:a@b"))
BLANKS = ["  ", "\t", "\u2003", "\x1c", "\x85", "\xa0", "\x0b", ""]
UNICODE_DIGITS = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=3)
SIZE_VALUE = st.one_of(
    st.integers(0, 10**12).map(str),
    UNICODE_DIGITS,
    st.tuples(st.integers(0, 99).map(str), UNICODE_DIGITS).map("".join),
    st.sampled_from(["", "-1", "1" * 21, "1e3"]),
)
BODY_VALUE = st.one_of(
    st.sampled_from(["7BIT", "8BITMIME", "8bitmime", "", "BINARYMIME"]), st.text(max_size=6)
)


@st.composite
def command_argument(draw: st.DrawFn, keyword: str) -> str:
    """`KEYWORD:<path> params`, each part usually valid and sometimes not."""
    text = draw(st.sampled_from([f"{keyword}:", f"{keyword.lower()}: ", f"{keyword.title()} :"]))
    if not draw(st.integers(0, 9)):
        text = draw(st.sampled_from([keyword, "TO:" if keyword == "FROM" else "FROM:", ""]))
    elif not draw(st.integers(0, 9)):  # a blank that must not pass for SP around the keyword
        blank = draw(st.sampled_from(BLANKS))
        text = draw(st.sampled_from([f"{blank}{keyword}:", f"{keyword}{blank}:"]))
    text += f"<{draw(VALID_MAILBOX if draw(st.integers(0, 3)) else MAILBOX)}>"
    for i in range(draw(st.integers(0, 3))):
        text += " " if i == 0 or draw(st.integers(0, 2)) else draw(st.sampled_from(BLANKS))
        key = draw(
            st.sampled_from(["SIZE", "BODY", "size", "Body"])
            if draw(st.integers(0, 3))
            else st.one_of(st.sampled_from(["NOTIFY", "X-Y", ""]), st.text(max_size=5))
        )
        value = draw(SIZE_VALUE if key.upper() == "SIZE" else BODY_VALUE)
        text += key + ("=" if draw(st.integers(0, 5)) else "") + value
    if not draw(st.integers(0, 4)):
        text += draw(st.sampled_from(BLANKS + [" "]))
    return text


MAIL_ARGUMENT = st.one_of(command_argument("FROM"), command_argument("FROM"), TEXT)
RCPT_ARGUMENT = st.one_of(command_argument("TO"), command_argument("TO"), TEXT)

_WIRE = re.compile(rb"[45][0-9]{2} [45]\.[0-9]{1,3}\.[0-9]{1,3}( [\x20-\x7e]*)?\r\n")


def assert_well_formed(reply: Reply) -> None:
    """A refusal: 4xx/5xx, an enhanced code of the same class, one ASCII line ending CRLF."""
    assert 400 <= reply.code <= 599, reply
    assert reply.enhanced.split(".")[0] == str(reply.code // 100), reply
    assert _WIRE.fullmatch(reply.to_bytes()), reply.to_bytes()


# --- commands and addresses -------------------------------------------------------------------


# Verbs, including lookalikes whose str.upper() is an SMTP verb (dotless i, long s).
VERB = st.one_of(
    st.sampled_from(
        ["MAIL", "mail", "RCPT", "ehlo", "STARTTLS", "maıl", "ſtarttls", "rſet", "ẞ", ""]
    ),
    st.text(max_size=6),
)


@FUZZ
@given(
    st.binary(max_size=600)
    | st.tuples(VERB, st.sampled_from([" ", ""]), MAIL_ARGUMENT).map(
        lambda t: "".join(t).encode("utf-8")
    )
)
@example("maıl FROM:<a@b.example>".encode())  # regression: a lookalike upper-cased into MAIL
def test_parse_command_only_command_errors(line: bytes) -> None:
    """parse_command on any bytes gives a Command or a CommandError with a well-formed reply."""
    try:
        command = parse_command(line)
    except CommandError as exc:
        assert_well_formed(exc.reply)
    else:
        assert b"\0" not in line and b"\r" not in line and b"\n" not in line
        if command.verb.isascii():  # an ASCII verb is upper case and was written in ASCII
            assert command.verb == command.verb.upper() and line.partition(b" ")[0].isascii()


@FUZZ
@given(MAIL_ARGUMENT)
@example("FROM:<a@b.example> SIZE=\u00b2")  # regressions found here: Unicode digits,
@example("FROM:<a@b.example> SIZE=\u0661")
@example("FROM:<a@b.example> SIZE=1\tBODY=7BIT")  # blanks other than SP,
@example("FROM:<a@b.example> BODY=\x1f BODY=7BIT")  # a repeated parameter hiding a bad value,
@example("\u2003FROM:<a@b.example>")  # a blank other than SP before the keyword
def test_parse_mail_only_command_errors(argument: str) -> None:
    """parse_mail on any argument gives a MailFrom or a CommandError with a well-formed reply."""
    try:
        mail = parse_mail(argument)
    except CommandError as exc:
        assert_well_formed(exc.reply)
    else:
        assert all(" " <= char <= "~" for char in argument), (
            "accepted MAIL with non-printable or non-ASCII text"
        )
        assert mail.size is None or mail.size >= 0
        assert mail.body in (None, "7BIT", "8BITMIME")


@FUZZ
@given(RCPT_ARGUMENT)
@example("TO:<a@b.example> \u2003")
def test_parse_rcpt_only_command_errors(argument: str) -> None:
    """parse_rcpt on any argument gives a RcptTo or a CommandError with a well-formed reply."""
    try:
        rcpt = parse_rcpt(argument)
    except CommandError as exc:
        assert_well_formed(exc.reply)
    else:
        assert all(" " <= char <= "~" for char in argument), (
            "accepted RCPT with non-printable or non-ASCII text"
        )
        assert not rcpt.recipient.is_null


@FUZZ
@given(TEXT.map(lambda t: f"<{t}>") | TEXT, st.booleans())
def test_parse_path_only_address_errors(path: str, sender: bool) -> None:
    """parse_path on any text gives an Address or an AddressError with a well-formed reply."""
    try:
        address = parse_path(path, sender=sender)
    except AddressError as exc:
        assert_well_formed(exc.reply)
    else:
        assert address.path() == path
        assert len(path) <= MAX_PATH and path.isascii()
        assert not any(c in address.text for c in "\x00\r\n\t")
        assert sender or not address.is_null


@FUZZ
@given(TEXT, st.booleans())
def test_accepted_path_is_kept_byte_for_byte(mailbox: str, sender: bool) -> None:
    """MAIL/RCPT accept exactly the paths parse_path accepts, text unchanged (no reinterpretation)."""
    path = f"<{mailbox}>"
    try:
        expected = parse_path(path, sender=sender)
    except AddressError as exc:
        expected_reply = exc.reply
        try:
            (parse_mail if sender else parse_rcpt)(("FROM:" if sender else "TO:") + path)
        except CommandError as command_exc:
            assert command_exc.reply.code in (expected_reply.code, 501)
        else:
            raise AssertionError(f"{path!r} refused by parse_path but accepted in a command")
        return
    if sender:
        assert parse_mail("FROM:" + path).sender == expected
    else:
        assert parse_rcpt("TO:" + path).recipient == expected
    assert expected.text == mailbox


REPLY_TEXT = st.lists(
    st.binary(max_size=12)
    | st.sampled_from([b"5.1.1 ", b"2.0.0", b"\r", b"\x00", b"\x1b[2J", b"\xff"]),
    max_size=5,
).map(b"".join)
# Mostly well-formed lines (one malformed line ends the example), sometimes not.
REPLY_LINE = st.tuples(
    st.sampled_from([b"250"] * 8 + [b"25", b"2x0"]),
    st.sampled_from([b" "] * 4 + [b"-"] * 4 + [b"", b"x"]),
    REPLY_TEXT,
    st.sampled_from([b"\r\n"] * 4 + [b"\n", b""]),
).map(b"".join)
REPLY_STREAM = st.one_of(st.binary(max_size=200), st.lists(REPLY_LINE, max_size=8).map(b"".join))


@FUZZ
@given(REPLY_STREAM, st.lists(st.integers(min_value=0), max_size=8))
def test_reply_parser_only_malformed_reply(stream: bytes, cuts: list[int]) -> None:
    """ReplyParser on any bytes, any chunking: replies with a clean wire form, or MalformedReply."""
    parser = ReplyParser()
    try:
        parsed = [reply for chunk in chunked(stream, cuts) for reply in parser.feed(chunk)]
    except MalformedReply:
        return
    for reply in parsed:
        wire = reply.to_bytes()
        assert (
            wire.isascii()
            and wire.endswith(b"\r\n")
            and wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
        )
        assert all(line[:3] == str(reply.code).encode() for line in wire.split(b"\r\n")[:-1])


# --- DATA -------------------------------------------------------------------------------------

# A body line: any bytes but CR, LF and NUL, often starting with dots, short enough for the limit.
LINE = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.sampled_from([b".", b"..", b"..."]), st.binary(max_size=20)).map(b"".join),
    st.sampled_from([b"", b".", b"..", b". ", b"From x", b"\xff\xfe", b"." + b"d" * 997]),
    # Lines near the limit: random head, padding, random tail (cheaper than 1000 random bytes).
    st.tuples(st.binary(max_size=8), st.integers(974, 982), st.binary(max_size=8)).map(
        lambda t: (t[0] + b"L" * t[1] + t[2])[:998]
    ),
    st.tuples(st.integers(990, 997), st.binary(max_size=8)).map(
        lambda t: (b"." + b"L" * t[0] + t[1])[:998]
    ),
).map(lambda b: b.replace(b"\r", b"x").replace(b"\n", b"y").replace(b"\0", b"z"))
BODY = st.lists(LINE, max_size=25).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


def client_stuff(body: bytes) -> bytes:
    """Dot-stuffing as an SMTP client does it: one more dot on each line that starts with one."""
    lines = body.split(b"\r\n")[:-1] if body else []
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the given positions (taken modulo its length, sorted, deduplicated)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def read_all(chunks: list[bytes], max_size: int = 10**9) -> tuple[DataReader, bytes, bytes, int]:
    """Feed chunks until done: the reader, the content, the leftover, the number of chunks fed."""
    reader = DataReader(max_size)
    content, leftover, fed = [], b"", 0
    for chunk in chunks:
        feed = reader.feed(chunk)
        fed += 1
        content.extend(feed.content)
        if feed.done:
            leftover = feed.leftover
            break
    return reader, b"".join(content), leftover, fed


@FUZZ_DATA
@given(BODY, st.lists(st.integers(min_value=0), max_size=12), st.binary(max_size=20))
@example(
    b"." + b"d" * 997 + b"\r\n", [], b""
)  # regression: the transparency dot counted in the line limit
def test_any_body_comes_out_exactly(body: bytes, cuts: list[int], after: bytes) -> None:
    """Any CRLF-lined body, client-stuffed, in any chunking, then .CRLF: the reader returns it exactly."""
    stream = client_stuff(body) + b".\r\n" + after
    reader, content, leftover, fed = read_all(chunked(stream, cuts))
    assert reader.error is None and reader.done
    assert content == body
    assert leftover + b"".join(chunked(stream, cuts)[fed:]) == after


@FUZZ_DATA
@given(
    BODY,
    st.lists(st.integers(min_value=0), max_size=12),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_dot_stuff_round_trip(body: bytes, cuts: list[int], recuts: list[int]) -> None:
    """dot_stuff of the reader's pieces is the client's stuffed body; re-reading it gives the body."""
    stuffed = client_stuff(body)
    reader = DataReader(10**9)
    relayed = b"".join(
        dot_stuff(piece)
        for chunk in chunked(stuffed + b".\r\n", cuts)
        for piece in reader.feed(chunk).content
    )
    assert relayed == stuffed
    again = read_all(chunked(relayed + b".\r\n", recuts))
    assert again[0].error is None and again[1] == body


# Arbitrary bytes, and mostly-valid streams (good lines, over-long lines) with junk spliced in.
JUNK = st.sampled_from(
    [
        b"\r\n",
        b"\r",
        b"\n",
        b".",
        b"\r\n.\r\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\0",
        b"x",
        b"..",
        b"x" * 1200,
        b"\r\n.",
        b"\xff",
    ]
)
SOUP = st.one_of(
    st.binary(max_size=3000),
    st.lists(JUNK, max_size=60).map(b"".join),
    st.lists(
        st.one_of(
            LINE.map(lambda line: line + b"\r\n"), LINE.map(lambda line: line + b"\r\n"), JUNK
        ),
        max_size=30,
    ).map(b"".join),
)


@FUZZ_DATA
@given(
    SOUP, st.lists(st.integers(min_value=0), max_size=20), st.integers(min_value=1, max_value=4000)
)
def test_byte_soup_never_breaks_the_reader(soup: bytes, cuts: list[int], max_size: int) -> None:
    """On any bytes the reader never raises, emits nothing once refused, keeps its buffer bounded."""
    reader = DataReader(max_size)
    emitted = 0
    for chunk in chunked(soup, cuts):
        feed = reader.feed(chunk)
        if reader.error is not None:
            assert feed.content == []
        for piece in feed.content:
            assert piece.endswith(b"\r\n") and b"\0" not in piece
            assert piece.count(b"\r") == piece.count(b"\n") == piece.count(b"\r\n")
            assert max(len(line) for line in piece.split(b"\r\n")) <= MAX_LINE - 2
            emitted += len(piece)
        assert emitted <= max_size
        assert (
            len(reader._buffer) <= MAX_LINE and len(reader._tail) <= 4
        )  # MAX_LINE: a stuffed line
        if feed.done:
            break


@FUZZ_DATA
@given(SOUP, st.lists(st.integers(min_value=0), max_size=20))
def test_byte_soup_accepted_content_round_trips(soup: bytes, cuts: list[int]) -> None:
    """When the reader accepts any bytes, the upstream decodes the same content from what is relayed."""
    chunks = chunked(soup, cuts)
    reader, content, leftover, fed = read_all(chunks)
    if reader.error is None and reader.done:
        assert soup.endswith(leftover + b"".join(chunks[fed:]))
        upstream, decoded, extra, _ = read_all([dot_stuff(content) + b".\r\n"])
        assert (upstream.error, upstream.done, decoded, extra) == (None, True, content, b"")
