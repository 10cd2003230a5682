"""The DATA phase: framing, validation and dot-stuffing (RFC 5321 4.1.1.4, 4.5.2).

`DataReader` turns the bytes an app sends after ``354`` into message content:
it ends only at CRLF.CRLF, removes the transparency dot, and refuses anything a
next hop could read differently (bare CR, bare LF, NUL), over-long lines and
oversized messages. After an error it keeps reading — discarding — until the
real end of data, so body text is never taken as commands.

It works on whole-line regions with bytes methods, not per line in Python, and
holds at most one partial line plus one read. `dot_stuff` is its inverse for the
upstream; because every region starts at a line start, it is exact across any
buffer boundary. Pure: no reactor, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from gateway.smtp import replies
from gateway.smtp.header_section import (
    CONTINUATION,
    FIELD,
    HeaderSection,
    run_of_fields,
)
from gateway.smtp.replies import Reply

MAX_LINE = 1000  # octets including CRLF, RFC 5321 4.5.3.1.6
# ... "not counting the leading dot duplicated for transparency": a line starting
# with a dot may be one octet longer on the wire.
TERMINATOR = b"\r\n.\r\n"
# A line of MAX_LINE octets or more (2 * _WINDOW - 1 bytes without LF, at least) covers a
# whole aligned window of _WINDOW bytes that holds no LF: windows are searched, not lines.
_WINDOW = MAX_LINE // 2


@dataclass
class Feed:
    """What one `DataReader.feed` produced."""

    content: list[bytes] = field(default_factory=list)
    done: bool = False
    leftover: bytes = b""  # bytes after the terminator: the next pipelined commands


class DataReader:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.received = 0  # raw bytes read, for the minimum data rate
        self.error: Reply | None = None
        self.done = False
        self._buffer = b""
        self._tail = b"\r\n"  # the DATA command line ended in CRLF

    def feed(self, data: bytes) -> Feed:
        if self.done:
            raise RuntimeError("DATA already complete")
        self._buffer += data
        self.received += len(data)
        feed = Feed()
        if self.error is None:
            self._read(feed)
        if self.error is not None and not feed.done:
            self._discard(feed)
        self.done = feed.done
        return feed

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply

    def _read(self, feed: Feed) -> None:
        buffer = self._buffer
        newline = buffer.rfind(b"\n")
        if newline < 0:
            if len(buffer) >= MAX_LINE + buffer.startswith(b"."):
                self._fail(replies.DATA_LINE_TOO_LONG)
                self._tail = b"\r\n"
            return
        region, rest = buffer[: newline + 1], buffer[newline + 1 :]
        if region.startswith(b".\r\n"):
            end = 0
        else:
            found = region.find(TERMINATOR)
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            content = region[:end]
            feed.done = True
            feed.leftover = region[end + 3 :] + rest
            self._buffer = b""
        else:
            content = region
            self._buffer = rest
        self._check(content)
        if not feed.done and len(rest) >= MAX_LINE + rest.startswith(b"."):
            self._fail(replies.DATA_LINE_TOO_LONG)
        if self.error is not None:
            if not feed.done:
                self._tail = region[-4:]
            return
        if content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        self.size += len(content)
        if self.size > self.max_size:
            self._fail(replies.SIZE_EXCEEDED)
            if not feed.done:
                self._tail = region[-4:]
            return
        if content:
            feed.content.append(content)

    def _check(self, content: bytes) -> None:
        crlf = content.count(b"\r\n")
        if b"\0" in content or content.count(b"\n") != crlf or content.count(b"\r") != crlf:
            self._fail(replies.BARE_LINE_ENDING)
        elif len(content) >= MAX_LINE and _window_without_lf(content):
            # Rare: only now look line by line, to let a stuffed line have its extra dot.
            if any(len(line) >= MAX_LINE + line.startswith(b".") for line in content.split(b"\n")):
                self._fail(replies.DATA_LINE_TOO_LONG)

    def _discard(self, feed: Feed) -> None:
        search = self._tail + self._buffer
        found = search.find(TERMINATOR)
        if found >= 0:
            feed.done = True
            feed.leftover = search[found + len(TERMINATOR) :]
            self._buffer = b""
        else:
            self._tail = search[-4:]
            self._buffer = b""


def _window_without_lf(content: bytes) -> bool:
    """Is there an aligned `_WINDOW`-byte window with no LF (False: every line is shorter
    than MAX_LINE octets)? About twenty ``find``s for 10 KiB, not a list of lines."""
    find = content.find
    for start in range(0, len(content) - _WINDOW + 1, _WINDOW):
        if find(b"\n", start, start + _WINDOW) < 0:
            return True
    return False


def dot_stuff(content: bytes) -> bytes:
    """Add the transparency dot to a region of whole lines starting at a line start."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


MAX_FROM_VALUE = 65536  # octets of the first From field kept for the From: check
MAX_MESSAGE_ID = 4096  # octets of the first Message-ID kept for the audit


class MessageFacts:
    """The audit's and the From: check's view of a message: size, SHA-256, Message-ID, From.

    The header section is read with `gateway.smtp.header_section.HeaderSection` (the grammar
    the header edits use too), however long it is, up to its cap; only the first Message-ID,
    the first From field's value (capped) and the number of From fields (up to two: more
    than one is all the From: check needs) are kept.
    """

    def __init__(self) -> None:
        self.size = 0
        self._sha256 = hashlib.sha256()
        self.section = HeaderSection()
        self._partial = b""  # a line not yet complete (the DATA reader sends whole lines)
        self._field = ""  # the field being read: "from", "message-id" (first ones) or ""
        self._values: dict[str, bytearray] = {}
        self.from_count = 0
        self.from_truncated = False

    def update(self, content: bytes) -> None:
        self.size += len(content)
        self._sha256.update(content)
        if self.section.done:
            return
        data = self._partial + content if self._partial else content
        start = 0
        while not self.section.done:
            if not self._field:  # fields the facts have no use for go by at once
                wanted = {"from"} if self.from_count < 2 else set()
                wanted |= set() if "message-id" in self._values else {"message-id"}
                start = self.section.skip(data, start, run_of_fields(frozenset(wanted)))
            end = data.find(b"\n", start) + 1
            if end == 0:
                break
            self._line(data[start:end])
            start = end
        self._partial = b"" if self.section.done else data[start:]
        if len(self._partial) > self.section.limit:  # no end in sight: the section refuses it
            partial, self._partial = self._partial, b""
            self._line(partial)

    def _line(self, line: bytes) -> None:
        read = self.section.read(line)
        if read.kind == FIELD:
            self._field = ""
            if read.name == "from":
                self.from_count += 1
                if self.from_count == 1:
                    self._field = "from"
            elif read.name == "message-id" and "message-id" not in self._values:
                self._field = "message-id"
            if self._field:
                self._values[self._field] = bytearray()
                self._keep(read.text)
        elif read.kind == CONTINUATION and self._field:
            self._keep(read.text)

    def _keep(self, text: bytes) -> None:
        value = self._values[self._field]
        cap = MAX_FROM_VALUE if self._field == "from" else MAX_MESSAGE_ID
        if len(value) + len(text) > cap:
            self.from_truncated |= self._field == "from"
            text = text[: max(cap - len(value), 0)]
        value += text

    def end_headers(self) -> None:
        """The message ended inside its header section: what was received is all header."""
        if self._partial:
            partial, self._partial = self._partial, b""
            self._line(partial)  # not a whole line: the section calls it malformed
        if not self.section.done:
            self.section.end_of_data()

    @property
    def headers_done(self) -> bool:
        return self.section.done

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def header(self, name: str) -> str | None:
        """The first `name` ("from" or "message-id") field's value, unfolded, or None."""
        value = self._values.get(name)
        if value is None:
            return None
        text = re.sub(rb"\r\n[ \t]+", b" ", bytes(value)).strip()
        return text.decode("utf-8", "replace")

    @property
    def message_id(self) -> str | None:
        return self.header("message-id")

    @property
    def header_from(self) -> str | None:
        return self.header("from")
