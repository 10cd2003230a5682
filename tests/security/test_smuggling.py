"""Class 3, SMTP smuggling: one DATA is one message, whatever the app or the next hop reads.

The payloads are those of SEC Consult's "SMTP Smuggling" research (Timo
Longin, 2023) and its follow-ups: end-of-data sequences that some servers
accept besides CRLF.CRLF. Behind mailgate sits a real aiosmtpd upstream, which
would deliver a second message if one were smuggled through. The dot-stuffing
toward the upstream is checked over real sockets with odd-sized writes, and
exhaustively (every split point) on the pure DATA reader.
"""

from __future__ import annotations

import itertools
import socket

import pytest

from gateway.smtp.data import DataReader, dot_stuff
from gateway.testing.trace import without_trace
from tests.conftest import relay_all, upstream_table

SMUGGLED = (
    b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
)
HEAD = b"From: app@example.com\r\nSubject: first\r\n\r\nfirst message"
ENVELOPE = b"EHLO app.test\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"


@pytest.fixture
def relay(make_upstream, start_gateway, ca):
    """A gateway relaying everything to an aiosmtpd STARTTLS upstream; returns (gateway, upstream)."""
    upstream = make_upstream()
    return start_gateway(relay_all(upstream_table(upstream, ca.ca_file))), upstream


class App:
    """An app on a raw socket, reading replies one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        """The last line of the next (possibly multi-line) reply."""
        while True:
            line = self.reader.readline()
            assert line, "the gateway closed the connection"
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def start_data(self) -> None:
        self.sock.sendall(ENVELOPE)
        assert [r[:3] for r in self.replies(4)] == [b"250", b"250", b"250", b"354"]

    def close(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        assert self.reply().startswith(b"221")
        self.sock.close()


def app_stuff(body: bytes) -> bytes:
    """What a correct app sends for `body` (CRLF lines): leading dots doubled."""
    return b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n")
    )


# --- smuggling payloads -------------------------------------------------------------------------

PAYLOADS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
    "CRLF.CR-CRLF": b"\r\n.\r\r\n",
    "LF-LF.CRLF": b"\n\n.\r\n",
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_smuggling_payload_neither_ends_data_nor_makes_a_second_message(payload, relay):
    """Prevents an alternative end-of-data sequence smuggling a second message (SEC Consult 2023)."""
    gw, upstream = relay
    app = App(gw.port)
    app.start_data()
    app.sock.sendall(HEAD + payload + SMUGGLED + b".\r\nNOOP\r\n")
    final, noop = app.replies(2)
    assert final.startswith(b"550 5.5.2")  # refused at the one real end of data
    assert noop.startswith(b"250 2.0.0")  # and nothing of the body ran as a command
    app.close()
    gw.audit.wait_for("session.closed")
    assert upstream.messages == [] and upstream.connections == 1


NEAR_TERMINATORS = {
    "dot-space": b"\r\n. \r\n",
    "dot-text": b"\r\n.x\r\n",
    "stuffed-dot": b"\r\n..\r\n",  # the app's escape for a line holding only "."
    "space-dot": b"\r\n .\r\n",
    "dot-tab": b"\r\n.\t\r\n",
    "two-stuffed-dots": b"\r\n..\r\n..\r\n",
}


@pytest.mark.parametrize("near", NEAR_TERMINATORS.values(), ids=NEAR_TERMINATORS.keys())
def test_only_crlf_dot_crlf_ends_data(near, relay):
    """Prevents a dot line that is not CRLF.CRLF ending the message, at mailgate or (unstuffed) upstream."""
    gw, upstream = relay
    app = App(gw.port)
    app.start_data()
    wire = HEAD + near + SMUGGLED  # as sent: already dot-stuffed by the app
    app.sock.sendall(wire + b".\r\n")
    assert app.reply().startswith(b"250")
    app.close()
    [message] = upstream.wait_for(1)
    assert without_trace(message.content) == b"".join(
        upstream_reads(wire + b".\r\n")
    )  # RFC 5321 4.5.2 unstuffing
    gw.audit.wait_for("session.closed")
    assert len(upstream.messages) == 1


# --- dot-stuffing toward the upstream ---------------------------------------------------------------


def dotty_body(lines: int) -> bytes:
    """A body where most lines start with dots, plus lines that smuggle commands once unstuffed."""
    patterns = [
        b".",
        b"..",
        b".x",
        b"...",
        b". ",
        b"plain",
        b"",
        b".MAIL FROM:<evil@example.com>",
        b"." * 996,
        b"x" * 997,
        b".DATA",
        b".",
    ]
    body = [b"Subject: dots", b""]
    body += [patterns[i % len(patterns)] + (b"%d" % i if i % 5 == 0 else b"") for i in range(lines)]
    return b"\r\n".join(line[:997] for line in body) + b"\r\n"  # 998 octets once stuffed


def test_dot_stuffing_is_exact_across_odd_sized_tcp_writes(relay):
    """Prevents a dot-leading line reaching the upstream unstuffed at a buffer boundary (early end, smuggling)."""
    gw, upstream = relay
    body = dotty_body(4000)
    wire = app_stuff(body) + b".\r\n"
    app = App(gw.port)
    app.start_data()
    sizes = itertools.cycle([1, 2, 3, 5, 7, 11, 13, 509, 997, 1999, 4093, 65537])
    position = 0
    while position < len(wire):
        size = next(sizes)
        app.sock.sendall(wire[position : position + size])
        position += size
    assert app.reply().startswith(b"250")
    app.close()
    [message] = upstream.wait_for(1)
    assert without_trace(message.content) == body
    gw.audit.wait_for("session.closed")
    assert len(upstream.messages) == 1 and upstream.connections == 1


def upstream_reads(stream: bytes) -> list[bytes]:
    """An independent, strict next hop: split CRLF lines, end at ".", unstuff; return the messages."""
    messages, lines = [], []
    for line in stream.split(b"\r\n")[:-1]:
        if line == b".":
            messages.append(b"".join(line + b"\r\n" for line in lines))
            lines = []
        else:
            lines.append(line[1:] if line.startswith(b".") else line)
    assert lines == [], "data after the final dot"
    return messages


SMALL = b"Subject: s\r\n\r\n.\r\n..\r\n.x\r\nplain\r\n.\r\n\r\n..\r\n"


def relayed_stream(pieces: list[bytes]) -> bytes:
    """What mailgate writes upstream for a DATA arriving as `pieces`: stuffed content, then the dot."""
    reader, out = DataReader(1 << 20), b""
    for piece in pieces:
        feed = reader.feed(piece)
        out += b"".join(dot_stuff(content) for content in feed.content)
        if feed.done:
            assert reader.error is None
            return out + b".\r\n"
    raise AssertionError("DATA never ended")


def test_dot_stuffing_is_exact_at_every_split_of_the_input():
    """Prevents dot-stuffing per buffer (Twisted's bug): every one- and two-point split relays the same body."""
    wire = app_stuff(SMALL) + b".\r\nNOOP\r\n"
    assert upstream_reads(relayed_stream([wire])) == [SMALL]
    for i, j in itertools.combinations(range(1, len(wire)), 2):
        pieces = [wire[:i], wire[i:j], wire[j:]]
        assert upstream_reads(relayed_stream(pieces)) == [SMALL], (i, j)


def test_body_starting_with_a_dot_is_stuffed():
    """Prevents a first body line of "." (a boundary Twisted misses) ending the message upstream."""
    body = b".\r\nMAIL FROM:<evil@example.com>\r\n"
    assert upstream_reads(relayed_stream([app_stuff(body) + b".\r\nNOOP\r\n"])) == [body]


# --- over-long lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1001, 2000, 20000])
def test_overlong_line_never_turns_the_body_into_commands(length, relay):
    """Prevents a line over 1000 octets ending DATA early so that a second transaction in the body runs."""
    gw, upstream = relay
    app = App(gw.port)
    app.start_data()
    body = HEAD + b"\r\n" + b"x" * length + b"\r\n" + SMUGGLED + b".\r\n"
    app.sock.sendall(body + b"NOOP\r\n")  # one write: the error and the end of data arrive together
    final, noop = app.replies(2)
    assert final.startswith(b"550 5.5.2")
    assert noop.startswith(b"250 2.0.0")
    app.close()
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "rejected"
    gw.audit.wait_for("session.closed")
    assert upstream.messages == [] and upstream.connections == 1


BIG_TAIL = (b"y" * 998 + b"\r\n") * 300  # 300 kB: the end of data comes many reads after the error


@pytest.mark.parametrize(
    "error", [b"x" * 2000 + b"\r\n", b"bare\nLF\r\n"], ids=["overlong-line", "bare-LF"]
)
def test_data_error_early_in_a_large_message_still_gets_550(error, relay):
    """Prevents a DATA error found long before the end of data from dropping the app without a reply."""
    gw, upstream = relay
    app = App(gw.port)
    app.start_data()
    app.sock.sendall(HEAD + b"\r\n" + error + BIG_TAIL + SMUGGLED + b".\r\nNOOP\r\n")
    final, noop = app.replies(2)
    assert final.startswith(b"550 5.5.2") and noop.startswith(b"250 2.0.0")
    app.close()
    assert upstream.messages == []


def test_oversized_message_still_gets_552(make_upstream, start_gateway, ca):
    """Prevents a message over max_message_size from dropping the app (which then retries) instead of 552."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file), max_message_size=10000))
    app = App(gw.port)
    app.start_data()
    app.sock.sendall(HEAD + b"\r\n" + BIG_TAIL + b".\r\nNOOP\r\n")
    final, noop = app.replies(2)
    assert final.startswith(b"552 5.3.4") and noop.startswith(b"250 2.0.0")
    app.close()
    assert upstream.messages == []
