"""How one message or one session reads on a terminal: `audit search` rows and `audit show` timelines.

Pure string building. Column widths are fixed from the terminal width before the
first row, so rows stream out aligned without holding the result in memory.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.events import Event
from gateway.audit.query import final_reply, recipient_addresses, record_time
from gateway.terminal import printable

HIDDEN = ("timestamp", "event", "session_id", "seq", "prev", "hash")


def clip(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _time(record: Mapping[str, Any]) -> str:
    when = record_time(record)
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else str(record.get("timestamp", "?"))[:19]


def _recipients(record: Mapping[str, Any]) -> str:
    addresses = recipient_addresses(record)
    if len(addresses) <= 1:
        return addresses[0] if addresses else ""
    return f"{addresses[0]} (+{len(addresses) - 1})"


@dataclass(frozen=True)
class Column:
    title: str
    width: int


@dataclass(frozen=True)
class MessageTable:
    """One row per ``message.result``: time, session, client, sender, recipients, outcome, upstream, reply."""

    columns: tuple[Column, ...]

    @classmethod
    def fitting(cls, width: int) -> MessageTable:
        session = 16 if width >= 140 else 8  # a prefix is enough for `audit show`
        fixed = {"time (UTC)": 19, "session": session, "client": 15, "outcome": 8}
        spare = max(width - sum(fixed.values()) - 2 * 7, 48)
        upstream = max(10, spare // 9)
        sender = recipients = max(16, spare * 22 // 100)
        reply = max(16, spare - upstream - sender - recipients)
        columns = (
            Column("time (UTC)", 19),
            Column("session", session),
            Column("client", 15),
            Column("sender", sender),
            Column("recipients", recipients),
            Column("outcome", 8),
            Column("upstream", upstream),
            Column("reply", reply),
        )
        return cls(columns)

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(
            f"{clip(c, col.width):<{col.width}}" for c, col in zip(cells, self.columns, strict=True)
        ).rstrip()

    def header(self) -> str:
        return self._line([c.title for c in self.columns])

    def row(self, record: Mapping[str, Any]) -> str:
        sender = record.get("sender", "")
        return self._line(
            [
                _time(record),
                str(record.get("session_id", ""))[
                    : self.columns[1].width
                ],  # cut, not "…": still a prefix
                str(record.get("client_ip", "")),
                f"<{sender}>" if isinstance(sender, str) else "",
                _recipients(record),
                str(record.get("outcome", "")),
                str(record.get("upstream") or "-"),
                final_reply(record),
            ]
        )


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _recipient_line(recipient: Mapping[str, Any]) -> str:
    extra = [f"rule {recipient['rule']}"] if recipient.get("rule") else []
    extra += [f"limit {recipient['limit']}"] if recipient.get("limit") else []
    tail = f" ({', '.join(extra)})" if extra else ""
    return f"{recipient.get('address', '?')}: {recipient.get('result', '?')}, {recipient.get('reply', '')}{tail}"


def _headline(record: Mapping[str, Any]) -> str:
    name = record.get("event")
    if name == Event.MESSAGE_RESULT:
        count = len(recipient_addresses(record))
        via = f" via {record['upstream']}" if record.get("upstream") else ""
        tls = f" ({record['tls_version']})" if record.get("tls_version") else ""
        return f"{record.get('outcome', '?')}: <{record.get('sender', '')}> to {count} recipient(s){via}{tls}"
    if name == Event.SESSION_OPENED:
        verdict = "allowed" if record.get("allowed") else "denied"
        return f"client {record.get('client_ip', '?')}:{record.get('client_port', '?')}, {verdict}"
    if name == Event.SESSION_CLOSED:
        seconds, count = record.get("duration_s", "?"), record.get("messages", 0)
        return f"{record.get('reason', '')}, {seconds} s, {count} message(s)"
    return ""


def timeline(session_id: str, records: Sequence[tuple[str, int, Mapping[str, Any]]]) -> str:
    """One session's events in order, each with its time, offset from the first, and every field."""
    times = [record_time(r) for _, _, r in records]
    known = [t for t in times if t is not None]
    start: dt.datetime | None = min(known) if known else None
    files = sorted({source for source, _, _ in records})
    lines = [
        f"session {session_id}: {len(records)} event(s)"
        + (f", {start:%Y-%m-%d %H:%M:%S}Z to {max(known):%H:%M:%S}Z" if start else ""),
        "in "
        + ", ".join(f"{f} (lines {_span([n for s, n, _ in records if s == f])})" for f in files),
        "",
    ]
    for (source, number, record), when in zip(records, times):
        clock = f"{when:%H:%M:%S.%f}"[:12] if when else "?" * 12
        offset = f"+{(when - start).total_seconds():.3f}s" if when and start else ""
        lines.append(
            f"{clock}  {offset:>8}  {record.get('event', '?'):<16} {_headline(record)}".rstrip()
        )
        fields = [(k, v) for k, v in record.items() if k not in HIDDEN]
        width = max((len(k) for k, _ in fields), default=0)
        for key, value in fields:
            if key == "recipients" and isinstance(value, list):
                lines.append(f"{'':25}{key}")
                lines += [f"{'':27}- {_recipient_line(r)}" for r in value if isinstance(r, Mapping)]
            else:
                lines.append(f"{'':25}{key:<{width}}  {_value(value)}")
    return "\n".join(printable(line) for line in lines)


def _span(numbers: list[int]) -> str:
    return f"{min(numbers)}" if min(numbers) == max(numbers) else f"{min(numbers)}-{max(numbers)}"
