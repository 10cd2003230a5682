"""An app's input as command lines: CRLF only, RFC 5321 line limits. Pure.

`CommandLines` holds the bytes the listener has not handled yet. `next` takes one command
line off the front (without its CRLF), or gives the reply to a line that cannot be a
command (too long, a bare LF), or None when the rest is not a whole line yet. A line longer
than the limit is dropped as it arrives, so the buffer of a line never grows past it.
Taking lines off the front costs no copy of the rest (a ``bytearray`` deletes its head in
place): a pipeline of thousands of commands is handled in linear time.
"""

from __future__ import annotations

from gateway.smtp import replies
from gateway.smtp.commands import COMMAND_LINE_LIMIT
from gateway.smtp.replies import Reply

NOT_CRLF = replies.NUL_IN_COMMAND.with_text("Command line must end with CRLF")


class CommandLines:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside a line past the limit: dropped up to its LF

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def put_back(self, data: bytes) -> None:
        """Bytes that belong before the rest (what followed the end of a message's data)."""
        self._buffer[:0] = data

    def take_all(self) -> bytes:
        """Everything held (a message's data, once DATA is answered 354)."""
        data = bytes(self._buffer)
        del self._buffer[:]
        return data

    def next(self) -> bytes | Reply | None:
        """The next command line, the reply to a line that is not one, or None: wait for more."""
        buffer = self._buffer
        newline = buffer.find(b"\n")
        if self._discarding:
            if newline < 0:
                del buffer[:]
                return None
            del buffer[: newline + 1]
            self._discarding = False
            return replies.LINE_TOO_LONG
        if newline < 0:
            if len(buffer) > COMMAND_LINE_LIMIT:
                del buffer[:]
                self._discarding = True
            return None
        line = bytes(buffer[:newline])
        del buffer[: newline + 1]
        if len(line) + 1 > COMMAND_LINE_LIMIT:
            return replies.LINE_TOO_LONG
        if not line.endswith(b"\r"):
            return NOT_CRLF
        return line[:-1]
