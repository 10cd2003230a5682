"""Unit tests of gateway/smtp/lines.py: an app's input as command lines."""

from __future__ import annotations

from gateway.smtp import replies
from gateway.smtp.commands import COMMAND_LINE_LIMIT
from gateway.smtp.lines import NOT_CRLF, CommandLines


def drain(lines: CommandLines) -> list[object]:
    taken = []
    while (item := lines.next()) is not None:
        taken.append(item)
    return taken


def test_lines_come_off_in_order_without_their_crlf():
    """Whole lines are taken one by one; a partial line waits for its CRLF."""
    lines = CommandLines()
    lines.feed(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRC")
    assert drain(lines) == [b"EHLO a", b"MAIL FROM:<a@b>"] and len(lines) == 2
    lines.feed(b"PT TO:<c@d>\r\n")
    assert drain(lines) == [b"RCPT TO:<c@d>"] and len(lines) == 0


def test_a_bare_lf_line_gets_a_reply():
    """A line ended by LF alone is answered, not taken as a command."""
    lines = CommandLines()
    lines.feed(b"NOOP\nNOOP\r\n")
    assert drain(lines) == [NOT_CRLF, b"NOOP"]


def test_a_long_line_is_dropped_as_it_arrives_and_answered_once():
    """Past the limit the line is discarded (the buffer stays small) and gets one 500."""
    lines = CommandLines()
    for _ in range(10):
        lines.feed(b"x" * COMMAND_LINE_LIMIT)
        assert lines.next() is None and len(lines) <= COMMAND_LINE_LIMIT
    lines.feed(b"xx\r\nNOOP\r\n")
    assert drain(lines) == [replies.LINE_TOO_LONG, b"NOOP"]


def test_data_is_taken_whole_and_leftover_put_back_in_front():
    """After 354 the listener takes the rest as data, and puts back what followed the dot."""
    lines = CommandLines()
    lines.feed(b"body\r\n.\r\nQUIT\r\n")
    assert lines.take_all() == b"body\r\n.\r\nQUIT\r\n" and len(lines) == 0
    lines.feed(b"NOOP\r\n")
    lines.put_back(b"QUIT\r\n")
    assert drain(lines) == [b"QUIT", b"NOOP"]
