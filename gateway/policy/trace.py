"""The trace fields the gateway writes into a message: Received, and a missing Date or Message-ID. Pure.

`received_field` is the ``Received:`` field RFC 5321 4.4 asks of a relay, in its form::

    Received: from <HELO> ([<client IP>])
    \tby <listener.hostname> (mailgate) with ESMTP id <session_id>;
    \t<RFC 5322 date>

``with`` is ``SMTP`` after HELO, ``ESMTP`` after EHLO, ``ESMTPA`` when the app authenticated
(RFC 3848; ``ESMTPS``/``ESMTPSA`` over TLS, which the listener does not offer today). No DNS
lookup: the client is named by its address literal only, and no ``for`` clause names a
recipient. `date_field` and `message_id_field` are what `gateway.policy.headers` adds at the
end of a header section that lacks them, as Postfix does for local submissions.

Every text is ASCII with no character that could end or restructure the field (the HELO name
is whatever the app sent; the host name is the operator's), so a field always parses.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

MAX_RECEIVED = 30  # more Received fields in the app's header section: a mail loop (554 5.4.6)
MAX_NAME = 255  # octets of a HELO or host name written into a field (RFC 5321 4.5.3.1.2)
NAMES = ("Received", "Date", "Message-ID")  # what the gateway may add, as the audit names them

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")  # outside these: replaced, so the field parses


def safe_name(name: str | None) -> str:
    """A HELO or host name as it may appear in a field: ASCII, no blank, comment or
    semicolon (each other character becomes ``?``), at most `MAX_NAME` characters."""
    text = _UNSAFE.sub("?", name or "")[:MAX_NAME]
    return text or "unknown"


def address_literal(ip: str) -> str:
    """The RFC 5321 4.1.3 address literal of `ip`: ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{safe_name(ip)}]"
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return f"[{mapped}]" if mapped is not None else f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def rfc5322_date(when: float) -> str:
    """`when` (seconds since the epoch) as an RFC 5322 3.3 date-time, in UTC (``+0000``)."""
    return format_datetime(datetime.fromtimestamp(when, UTC))


def protocol(*, esmtp: bool, authenticated: bool, tls: bool = False) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPA, ESMTPS or ESMTPSA (RFC 3848)."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def received_field(
    *,
    helo: str | None,
    client_ip: str,
    hostname: str,
    with_: str,
    id_: str,
    when: float,
) -> bytes:
    """The Received field (with its CRLF), folded before ``by`` and before the date."""
    return (
        f"Received: from {safe_name(helo)} ({address_literal(client_ip)})\r\n"
        f"\tby {safe_name(hostname)} (mailgate) with {with_} id {safe_name(id_)};\r\n"
        f"\t{rfc5322_date(when)}\r\n"
    ).encode("ascii")


def date_field(when: float) -> bytes:
    """``Date: <when>`` with its CRLF."""
    return f"Date: {rfc5322_date(when)}\r\n".encode("ascii")


def message_id_field(hostname: str, when: float, token: str | None = None) -> bytes:
    """``Message-ID: <time.random@hostname>``: unique across instances (80 random bits)."""
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%d%H%M%S")
    token = token or secrets.token_hex(10)
    return f"Message-ID: <{stamp}.{token}@{safe_name(hostname)}>\r\n".encode("ascii")


@dataclass(frozen=True)
class Trace:
    """What the gateway writes into one message: `received` at the top (empty with
    ``listener.add_received = false``), `date` and `message_id` at the end of the header
    section when it has no such field."""

    received: bytes
    date: bytes
    message_id: bytes

    @property
    def most_added(self) -> int:
        """Octets the trace adds at most (what SIZE to the upstream allows for)."""
        return len(self.received) + len(self.date) + len(self.message_id)
