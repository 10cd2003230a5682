"""Tests read a delivered message as the app sent it: the gateway's trace fields taken off.

`split_trace` takes off the Received field the gateway prepends (it must be first, in the
gateway's form) and the Date and Message-ID it appends (they must be the last fields of the
header section, in its form), and says which it found; what remains must be the app's bytes
exactly, so a test comparing it with what the app sent still sees any other change.
"""

from __future__ import annotations

import re

RECEIVED = re.compile(
    rb"Received: from [^\r\n]+ \(\[[^\r\n]+\]\)\r\n"
    rb"\tby [^\r\n]+ \(mailgate\) with E?SMTP[SA]* id [^;\s]+;\r\n"
    rb"\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n"
)
DATE = rb"Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n"
MESSAGE_ID = rb"Message-ID: <\d{14}\.[0-9a-f]{20}@[^\r\n>]+>\r\n"
_ADDED = re.compile(b"(?P<date>" + DATE + b")?(?P<mid>" + MESSAGE_ID + b")?(?=\r\n|$)")


def split_trace(content: bytes) -> tuple[bytes, list[str]]:
    """The message without the gateway's trace fields, and their names in the audit's order."""
    added = []
    received = RECEIVED.match(content)
    if received is not None:
        added.append("Received")
        content = content[received.end() :]
    end = content.find(b"\r\n\r\n")
    head_end = len(content) if end < 0 else end + 2
    for start in _line_starts(content, head_end):
        tail = _ADDED.fullmatch(content, start, head_end)
        if tail is not None and (tail.group("date") or tail.group("mid")):
            added += [n for n, g in (("Date", "date"), ("Message-ID", "mid")) if tail.group(g)]
            return content[:start] + content[head_end:], added
    return content, added


def without_trace(content: bytes) -> bytes:
    """The message as the app sent it (see `split_trace`)."""
    return split_trace(content)[0]


def _line_starts(content: bytes, end: int) -> list[int]:
    starts = [0] + [m.end() for m in re.finditer(rb"\r\n", content[:end])]
    return [s for s in starts if s < end]
