"""A message's header section, line by line: the one grammar every header check reads. Pure.

The header edits (`gateway.policy.headers`), the From: check (`gateway.inbound.from_header`)
and the audit's message facts (`gateway.smtp.data.MessageFacts`) all read the header section
through `HeaderSection`, so they cannot disagree about where it ends or what a field is.
The grammar (RFC 5322 2.2, 3.5, without the obsolete syntax of 4.5; docs/security.md):

    header-section = field *(field / continuation)    ; ends at the first empty line,
                                                      ; or at the end of data
    field          = field-name ":" *text CRLF
    field-name     = 1*ftext                          ; ftext = %d33-57 / %d59-126
    continuation   = WSP *text non-WSP *text CRLF     ; folds the field before it

Anything else before the first empty line is malformed: a first line that is empty (a message
with no header section), a first line that is a continuation, a line of white space only, a
line without a colon, an empty field name, white space or 8-bit bytes before the colon. So is
an empty message, and a header section longer than `MAX_HEADER_SECTION` octets.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_HEADER_SECTION = 1 << 20  # octets; past it no header check can be trusted: refused

FIELD = "field"
CONTINUATION = "continuation"
END = "end"  # the empty line that ends the header section
MALFORMED = "malformed"

# The grammar's pieces: every pattern below is built from these, so there is one grammar.
_NAME = rb"[\x21-\x39\x3b-\x7e]+"  # 1*ftext
_FIELD_REST = rb":[^\r\n]*\r\n"
_CONTINUATION_LINE = rb"[ \t]+[^ \t\r\n][^\r\n]*\r\n"
_FIELD = re.compile(b"(" + _NAME + b")" + _FIELD_REST)
_CONTINUATION = re.compile(_CONTINUATION_LINE)
_NAME_THEN_WSP = re.compile(_NAME + rb"[ \t]+:")


@functools.lru_cache(maxsize=64)
def run_of_fields(names: frozenset[str], *, named: bool = False) -> re.Pattern[bytes]:
    """A pattern for `HeaderSection.skip`: a run of fields not named `names` (`named`: only
    fields named `names`), with their continuations. Names in lower case, matched without
    regard to case."""
    choice = b"|".join(re.escape(n.encode("ascii")) for n in sorted(names))
    if named:
        name = b"(?:" + (choice or b"(?!)") + b")(?=:)"
    else:
        name = (b"(?!(?:" + choice + b"):)" if choice else b"") + _NAME
    field = name + _FIELD_REST
    return re.compile(b"(?:" + field + b"|" + _CONTINUATION_LINE + b")*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HeaderLine:
    """One line of the header section, classified."""

    kind: str  # FIELD, CONTINUATION, END or MALFORMED
    name: str = ""  # a field's name in lower case
    text: bytes = b""  # a field's text after the colon, a continuation's whole line (with CRLF)


_END = HeaderLine(END)


class HeaderSection:
    """Reads one message's header section; give it each line (with its CRLF) until `done`."""

    def __init__(self, limit: int = MAX_HEADER_SECTION) -> None:
        self.limit = limit
        self.lines = 0
        self.size = 0
        self.done = False
        self.problem: str | None = None  # why the header section is not well formed
        self.too_big = False

    def read(self, line: bytes) -> HeaderLine:
        """Classify the next line; after END or MALFORMED the header section is done."""
        if self.done:
            raise RuntimeError("header section already done")
        self.lines += 1
        self.size += len(line)
        if self.size > self.limit:
            self.too_big = True
            return self._malformed(f"the header section is longer than {self.limit} octets")
        field = _FIELD.fullmatch(line)
        if field is not None:
            return HeaderLine(
                FIELD, field.group(1).decode("ascii").lower(), line[field.end(1) + 1 :]
            )
        if self.lines > 1 and _CONTINUATION.fullmatch(line) is not None:
            return HeaderLine(CONTINUATION, text=line)
        if line == b"\r\n":
            if self.lines == 1:
                return self._malformed("the first line is empty: the message has no header section")
            self.done = True
            return _END
        return self._malformed(f"line {self.lines} {_why_not_a_field(line, self.lines)}")

    def skip(self, data: bytes, start: int, run: re.Pattern[bytes]) -> int:
        """Read at once the lines at `data[start:]` that `run` (`run_of_fields`)
        matches; the offset after them. Per line, `read` would classify each one as a FIELD
        or a CONTINUATION: use it only where the line before was a field or a continuation
        (so never for the first line), and only for lines the caller has no use for."""
        if self.done or self.lines == 0:
            return start
        room = self.limit - self.size
        matched = run.match(data, start, min(len(data), start + max(room, 0)))
        end = matched.end() if matched is not None else start
        self.lines += data.count(b"\n", start, end)
        self.size += end - start
        return end

    def end_of_data(self) -> None:
        """Data ended inside the header section (a message that is all header, or empty)."""
        if not self.done:
            if self.lines == 0:
                self.problem = "the message is empty: it has no header section"
            self.done = True

    def _malformed(self, problem: str) -> HeaderLine:
        self.problem = problem
        self.done = True
        return HeaderLine(MALFORMED)


def _why_not_a_field(line: bytes, number: int) -> str:
    if not line.endswith(b"\r\n") or b"\r" in line[:-2] or b"\n" in line[:-2]:
        return "does not end in CRLF alone"
    if line[:1] in (b" ", b"\t"):
        if number == 1:
            return "starts with white space: a continuation cannot be the first line"
        return "is white space only"
    if line.startswith(b":"):
        return "has an empty field name"
    if _NAME_THEN_WSP.match(line):
        return "has white space between the field name and the colon"
    return "is neither a field (a name of printable ASCII, then a colon) nor a continuation"
