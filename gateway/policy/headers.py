"""Header edits on the way out: a rule's ``rewrite_from`` and ``strip_headers`` applied.

`HeaderRewriter` consumes the content regions `gateway.smtp.data.DataReader` emits
(whole CRLF lines, transparency dots removed) and returns what to relay. It
edits the header section only — folded fields included, names matched without
regard to case — and once the blank line that ends the header section has
passed, every region goes through unchanged and unbuffered. Only the original
From field is held (for Reply-To and the audit), never a whole message.

Lines are read with `gateway.smtp.header_section.HeaderSection`, the grammar the
From: check and the audit read too. A header section that is not well formed
(`problem`) stops the rewriter: nothing more is returned, and the message must be
refused (`gateway.inbound.body` does), so no receiver can find a header we did not edit.

Rewriting From: every From field is replaced by one ``From: <rewrite_from>``
at the place of the first; the original value goes to a ``Reply-To:`` added at
the end of the header section, unless the message (after stripping) already
has a Reply-To. A message without From gets one. Sender is left alone (strip
it with ``strip_headers`` if the provider objects to it).

The trace (`gateway.policy.trace.Trace`) goes the same way: the gateway's Received field
before the first line, a Date and a Message-ID at the end of the header section when the
message (after stripping) has none, matched without regard to case. The app's Received
fields are counted (`received`); past `MAX_RECEIVED` (`looped`) nothing more is returned
and the message must be refused as a loop. Without header edits a header section that is
not well formed is not refused: the rest passes through as it is, with only the Received
field added (where the header section ends is not known, so nothing is added there).
`added` names what was added, for the audit. Nothing the app sent is changed by the trace.
Pure: no reactor, no I/O.
"""

from __future__ import annotations

import re

from gateway.config.headers import HeaderEdits
from gateway.policy.trace import MAX_RECEIVED, Trace
from gateway.smtp.header_section import (
    CONTINUATION,
    END,
    FIELD,
    HeaderSection,
    run_of_fields,
)

MAX_ORIGINAL_FROM = 65536  # octets of the original From kept for Reply-To and the audit


class HeaderRewriter:
    """Streaming header editor for one message. Feed regions; call `finish` at the end of data."""

    def __init__(self, edits: HeaderEdits | None = None, trace: Trace | None = None) -> None:
        self.edits = edits = edits or HeaderEdits()
        self.trace = trace
        self.strict = bool(edits)  # a header section not well formed stops it (then refused)
        self.received = 0  # Received fields in the app's header section
        self.added: list[str] = []  # the fields the trace added, as the audit names them
        self._prepended = False
        self._present: set[str] = set()  # "date", "message-id": kept in the header section
        self.in_body = False
        self._field = "none"  # the current field: "keep", "drop", "first-from" or "other-from"
        self._original_from = bytearray()
        self._from_seen = False
        self._reply_to_seen = False
        self._from_truncated = False
        self.section = HeaderSection()
        watched = {"received", "date", "message-id"} if trace is not None else set()
        edited = edits.strip | {"reply-to"} | ({"from"} if edits.rewrite_from else set())
        self._kept = run_of_fields(frozenset(edited | watched))
        dropped = edits.strip - {"from", "reply-to"} - watched
        self._dropped = run_of_fields(frozenset(dropped), named=True)

    @property
    def problem(self) -> str | None:
        """Why the header section is not well formed (then the message must be refused)."""
        return self.section.problem

    @property
    def message_id(self) -> str | None:
        """The Message-ID the trace added (the message had none), else None."""
        if self.trace is None or "Message-ID" not in self.added:
            return None
        return self.trace.message_id.partition(b":")[2].strip().decode("ascii")

    @property
    def looped(self) -> bool:
        """More than `MAX_RECEIVED` Received fields: a mail loop (the message must be refused)."""
        return self.received > MAX_RECEIVED

    @property
    def stopped(self) -> bool:
        """Nothing more is returned: the message must be refused."""
        return self.looped or (self.strict and self.problem is not None)

    @property
    def original_from(self) -> str | None:
        """The first From field's value as the app sent it, unfolded (None when it had none)."""
        if not self._from_seen:
            return None
        value = re.sub(rb"\r\n[ \t]+", b" ", bytes(self._original_from)).strip()
        text = value.decode("utf-8", "replace")
        return text + "..." if self._from_truncated else text

    def feed(self, content: bytes) -> bytes:
        """Return the bytes to relay for one region of whole lines."""
        if self.in_body:
            return content
        out: list[bytes] = [self._prepend()]
        start = 0
        while start < len(content) and not self.stopped:
            if self._field == "keep":  # fields kept as they are go by at once
                run = self.section.skip(content, start, self._kept)
                out.append(content[start:run])
                start = run
            elif self._field == "drop":  # and so do fields stripped whole
                start = self.section.skip(content, start, self._dropped)
            if start == len(content):
                break
            end = content.find(b"\n", start) + 1 or len(content)
            line = content[start:end]
            if not self._header_line(line, out):
                out.append(content[start:])  # the body starts here: pass the rest through
                break
            start = end
        return b"".join(out)

    def finish(self) -> bytes:
        """The additions still due when data ended inside the header section."""
        if self.in_body:
            return b""
        self.section.end_of_data()
        if self.stopped:
            return b""
        self.in_body = True
        prefix = self._prepend()  # an empty message was never fed
        return prefix if self.problem is not None else prefix + self._additions()

    def _header_line(self, line: bytes, out: list[bytes]) -> bool:
        """Handle one header-section line; False when it is the empty line that ends it."""
        read = self.section.read(line)
        if read.kind == CONTINUATION:
            if self._field == "keep":
                out.append(line)
            elif self._field == "first-from":
                self._keep_from(line)
            return True  # continuation of a dropped field ("drop", "other-from"): dropped too
        if read.kind == END:
            self.in_body = True
            out.append(self._additions())
            return False
        if read.kind != FIELD:  # malformed: with edits nothing more leaves (refused)
            if self.strict:
                return True
            self.in_body = True  # without: the rest goes as it is
            return False
        name = read.name
        if name == "received" and self.trace is not None:
            self.received += 1
            if self.looped:
                return True  # nothing more leaves: refused as a loop
        if name == "from" and self.edits.rewrite_from:
            if self._from_seen:
                self._field = "other-from"
            else:
                self._field = "first-from"
                self._from_seen = True
                self._keep_from(read.text)
                out.append(self._new_from())
        elif name in self.edits.strip:
            self._field = "drop"
        else:
            self._field = "keep"
            self._reply_to_seen |= name == "reply-to"
            if name in ("date", "message-id"):
                self._present.add(name)
            out.append(line)
        return True

    def _keep_from(self, text: bytes) -> None:
        room = MAX_ORIGINAL_FROM - len(self._original_from)
        if len(text) > room:
            self._from_truncated = True
        self._original_from += text[: max(room, 0)]

    def _new_from(self) -> bytes:
        assert self.edits.rewrite_from is not None
        return b"From: " + self.edits.rewrite_from.encode("ascii") + b"\r\n"

    def _prepend(self) -> bytes:
        """The Received field, once, before the first line."""
        if self._prepended or self.trace is None or not self.trace.received:
            return b""
        self._prepended = True
        self.added.append("Received")
        return self.trace.received

    def _additions(self) -> bytes:
        """What goes at the end of the header section: Reply-To, then a missing Date, Message-ID."""
        out = self._reply_to()
        if self.trace is not None:
            for name, text, field in (
                ("date", "Date", self.trace.date),
                ("message-id", "Message-ID", self.trace.message_id),
            ):
                if name not in self._present:
                    self.added.append(text)
                    out += field
        return out

    def _reply_to(self) -> bytes:
        if not self.edits.rewrite_from:
            return b""
        if not self._from_seen:
            return self._new_from()
        value = bytes(self._original_from).rstrip(b"\r\n")
        if self._reply_to_seen or self._from_truncated or not value.strip():
            return b""
        return b"Reply-To:" + value + b"\r\n"
