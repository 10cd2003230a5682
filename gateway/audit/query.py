"""Which audit records a reviewer asked for: time windows and message filters. Pure.

Times are absolute ISO 8601 (``2026-11-28``, ``2026-11-28T13:00``, ``...Z`` or
``+01:00``; no zone means UTC) or an age before now (``90s``, ``30m``, ``2h``,
``7d``, ``2w``). Text filters compare without case; ``*`` and ``?`` are wildcards
(``*@example.com``). ``--client`` takes an address or a network (``10.0.0.0/8``).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.events import RELAY_OUTCOMES, Event
from gateway.errors import UsageError

OUTCOMES = RELAY_OUTCOMES  # in relay mode; shown first, in this order
_WORD = re.compile(r"[a-z][a-z_-]{0,31}")
RESULT = Event.MESSAGE_RESULT
_AGE = re.compile(r"(\d+)\s*([smhdw])")
_HEAD = re.compile(r'\{"timestamp":"([^"]{10,40})","event":"([^"]{1,80})"')
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_time(option: str, text: str, now: dt.datetime) -> dt.datetime:
    """An absolute ISO time or an age such as ``2h`` (before `now`), as an aware UTC datetime."""
    age = _AGE.fullmatch(text.strip().lower())
    if age:
        return now - dt.timedelta(seconds=int(age.group(1)) * _UNITS[age.group(2)])
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: found {text!r}, expected an ISO date or time such as 2026-11-28 or "
            "2026-11-28T13:00Z, or an age such as 30m, 2h, 7d"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def record_time(record: Mapping[str, Any]) -> dt.datetime | None:
    """The record's ``timestamp`` as an aware datetime (None when missing or malformed)."""
    return _time(record.get("timestamp"))


def peek(line: str) -> tuple[dt.datetime | None, str] | None:
    """A record line's time and event name without parsing the JSON (None: not laid out as written)."""
    head = _HEAD.match(line)
    return (_time(head.group(1)), head.group(2)) if head else None


def _time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


@dataclass(frozen=True)
class Window:
    """[since, until): either end may be open."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def open(self) -> bool:
        return self.since is None and self.until is None

    def contains(self, record: Mapping[str, Any]) -> bool:
        return self.open or self.admits(record_time(record))

    def admits(self, when: dt.datetime | None) -> bool:
        if self.open:
            return True
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )

    def may_contain(self, line: str) -> bool:
        """A cheap look at a line's timestamp: False only when it is surely outside."""
        if self.open:
            return True
        head = peek(line)
        return head is None or head[0] is None or self.admits(head[0])


def _pattern(text: str) -> str:
    return text.strip().lower().strip("<>")


def _like(value: object, patterns: Sequence[str]) -> bool:
    if not isinstance(value, str):
        return False
    value = value.lower()
    return any(
        fnmatch.fnmatchcase(value, p) if any(c in p for c in "*?[") else value == p
        for p in patterns
    )


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise UsageError(
                f"--client: found {text!r}, expected an IP address or a network such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class MessageFilter:
    """What `audit search` matches against each ``message.result``; empty fields match anything."""

    window: Window = Window()
    senders: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    clients: tuple[Network, ...] = ()
    rules: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        window: Window = Window(),
        *,
        senders: Sequence[str] = (),
        recipients: Sequence[str] = (),
        clients: Sequence[str] = (),
        rules: Sequence[str] = (),
        upstreams: Sequence[str] = (),
        outcomes: Sequence[str] = (),
        sessions: Sequence[str] = (),
    ) -> MessageFilter:
        for (
            outcome
        ) in outcomes:  # not only OUTCOMES: other delivery modes have outcomes of their own
            if not _WORD.fullmatch(outcome):
                raise UsageError(
                    f"--outcome: found {outcome!r}, expected an outcome such as "
                    f"{', '.join(OUTCOMES)}"
                )
        return cls(
            window,
            tuple(map(_pattern, senders)),
            tuple(map(_pattern, recipients)),
            parse_networks(clients),
            tuple(r.lower() for r in rules),
            tuple(u.lower() for u in upstreams),
            tuple(outcomes),
            tuple(s.lower() for s in sessions),
        )

    def matches(self, record: Mapping[str, Any]) -> bool:
        if record.get("event") != RESULT:
            return False
        if self.outcomes and record.get("outcome") not in self.outcomes:
            return False
        if self.sessions and not any(_like(s, self.sessions) for s in sessions_of(record)):
            return False
        if self.senders and not _like(record.get("sender"), self.senders):
            return False
        if self.recipients and not any(
            _like(a, self.recipients) for a in recipient_addresses(record)
        ):
            return False
        if self.upstreams and not any(_like(u, self.upstreams) for u in upstreams_of(record)):
            return False
        if self.rules and not any(_like(r, self.rules) for r in rules_of(record)):
            return False
        if self.clients and not _client_in(record.get("client_ip"), self.clients):
            return False
        return self.window.contains(record)


def _client_in(text: object, networks: Sequence[Network]) -> bool:
    if not isinstance(text, str):
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address in network for network in networks)


def recipients_of(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = record.get("recipients")
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []


def recipient_addresses(record: Mapping[str, Any]) -> list[str]:
    return [str(r.get("address", "")) for r in recipients_of(record)]


def sessions_of(record: Mapping[str, Any]) -> list[str]:
    """The session a record belongs to, and the session a queued message came from."""
    return [str(record[k]) for k in ("session_id", "origin_session_id") if record.get(k)]


def upstreams_of(record: Mapping[str, Any]) -> list[str]:
    """The message's upstream, or each recipient's when they went different ways."""
    if record.get("upstream"):
        return [str(record["upstream"])]
    names = [str(r["upstream"]) for r in recipients_of(record) if r.get("upstream")]
    return list(dict.fromkeys(names))


def rules_of(record: Mapping[str, Any]) -> list[str]:
    rules = record.get("rules")
    names = [str(r) for r in rules] if isinstance(rules, list) else []
    names += [
        str(r["rule"])
        for r in recipients_of(record)
        if r.get("rule") and str(r["rule"]) not in names
    ]
    return names


def final_reply(record: Mapping[str, Any]) -> str:
    """The reply that best says how a message ended, for a one-line view."""
    reply = record.get("reply")
    if isinstance(reply, str) and reply:
        return reply
    outcome = record.get("outcome")
    for recipient in recipients_of(record):
        if recipient.get("result") == outcome and recipient.get("reply"):
            return str(recipient["reply"])
    return str(record.get("upstream_error") or record.get("reason") or "")


def reasons(record: Mapping[str, Any]) -> list[str]:
    """Why a rejected or deferred message ended so: each distinct reply or error once."""
    outcome = record.get("outcome")
    found: list[str] = []
    for recipient in recipients_of(record):
        if recipient.get("result") == outcome and recipient.get("reply"):
            text = str(recipient["reply"])
            if recipient.get("limit"):
                text += f" ({recipient['limit']})"
            elif recipient.get("rule") and f"rule {recipient['rule']}" not in text:
                text += f" (rule {recipient['rule']})"
            if text not in found:
                found.append(text)
    if not found:
        other = record.get("reply") or record.get("upstream_error") or record.get("reason")
        if other:
            found.append(str(other))
    return found
