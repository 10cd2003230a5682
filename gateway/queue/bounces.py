"""Delivery status notifications (RFC 3464 inside RFC 6522 multipart/report). Pure.

When a queued recipient fails permanently (a 5xx, or ``max_age`` reached) and
``[queue] bounce = true``, the envelope sender gets one DSN per delivery round
listing the recipients that failed in it. The DSN has the null sender ``<>``
(so it is never bounced itself), is queued like any message, and goes out
through the upstream of the first failed recipient: the route the original
message took. A message sent with the null sender, or a DSN, gets no DSN.

A DSN goes only to a sender the policy vouches for (`vouched_by`, with the config in force
at the bounce): one matching the *explicit* ``senders`` of the app that authenticated when the
message was queued (the default, any sender, vouches for nothing), or the ``senders`` of a
failed recipient's rule marked ``bounce_to_senders = true``. Anyone else could otherwise
have our account mail their text to a victim by naming it as sender. The DSN carries the
original header section only (``text/rfc822-headers``, cut at the first line that is not a
header field: never body text), never the body.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

from gateway.config.model import Config
from gateway.policy.rules import sender_owned
from gateway.queue.spool import Envelope, RecipientState

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
BOUNDARY_PREFIX = "mailgate-dsn-"


def wants_bounce(envelope: Envelope) -> bool:
    """A DSN goes only to a real sender, and never about a DSN."""
    return bool(envelope.sender) and envelope.bounce_of is None


NOT_VOUCHED = "suppressed: sender not vouched for"
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


def vouched_by(envelope: Envelope, failed: Sequence[RecipientState], config: Config) -> str | None:
    """The setting that lets a DSN go to `envelope`'s sender, or None (no DSN then)."""
    sender = envelope.sender
    app = config.apps.get(envelope.app or "")
    if app is not None and app.senders is not None and sender_owned(app.senders, sender):
        return f"apps.{app.name}.senders"
    rules = {rule.name: rule for rule in config.rules}
    for name in dict.fromkeys(r.rule for r in failed if r.rule):
        rule = rules.get(name)
        if rule is None or not rule.bounce_to_senders or rule.senders is None:
            continue
        if sender_owned(rule.senders, sender):
            return f"rules[{rule.name}].bounce_to_senders"
    return None


def headers_only(head: bytes) -> bytes:
    """The header fields at the start of `head` (CRLF lines), up to the first non-field line.

    A line that is neither a field (``name:``) nor a continuation ends the section, so a
    message without a proper header section puts none of its text in the DSN.
    """
    kept = 0
    for line in head.splitlines(keepends=True):
        if not line.endswith(b"\r\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if kept == 0:
                break
        elif not _FIELD.match(line):
            break
        kept += len(line)
    return head[:kept]


def status_of(recipient: RecipientState) -> str:
    """The RFC 3463 status for a failed recipient: from its last reply, else 5.0.0."""
    if recipient.expired:
        return "5.4.7"
    match = _ENHANCED.search(recipient.last_reply or "")
    if match and match.group(1).startswith("5"):
        return match.group(1)
    return "5.0.0"


def _ascii(text: str, limit: int = 900) -> str:
    """One header-safe line: printable ASCII only, bounded length."""
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text.replace("\n", " / "))
    return clean[:limit]


def build(
    envelope: Envelope,
    failed: Sequence[RecipientState],
    original_headers: bytes,
    *,
    hostname: str,
    dsn_id: str,
    now: float,
) -> bytes:
    """The DSN message for `failed` recipients of `envelope`, CRLF lines, ready to queue."""
    boundary = f"{BOUNDARY_PREFIX}{dsn_id}"
    date = email.utils.formatdate(now, usegmt=True)
    arrival = email.utils.formatdate(envelope.received, usegmt=True)
    listing = "\r\n".join(
        f"<{_ascii(r.address)}>: {_ascii(r.last_reply or 'failed')}"
        + (" (gave up: message too old, queue.max_age)" if r.expired else "")
        for r in failed
    )
    human = (
        f"This is the mail gateway at {hostname}.\r\n"
        "\r\n"
        "Your message could not be delivered to the following recipient(s).\r\n"
        "It will not be tried again.\r\n"
        "\r\n"
        f"{listing}\r\n"
    )
    per_message = (
        f"Reporting-MTA: dns; {_ascii(hostname)}\r\n"
        f"X-Mailgate-Queue-ID: {envelope.id}\r\n"
        f"Arrival-Date: {arrival}\r\n"
    )
    per_recipient = ""
    for r in failed:
        per_recipient += (
            "\r\n"
            f"Final-Recipient: rfc822; {_ascii(r.address)}\r\n"
            "Action: failed\r\n"
            f"Status: {status_of(r)}\r\n"
            + (f"Diagnostic-Code: smtp; {_ascii(r.last_reply)}\r\n" if r.last_reply else "")
            + (
                f"Last-Attempt-Date: {email.utils.formatdate(r.last_attempt, usegmt=True)}\r\n"
                if r.last_attempt
                else ""
            )
        )
    headers = (
        original_headers
        if original_headers.endswith(b"\r\n") or not original_headers
        else original_headers + b"\r\n"
    )
    parts = (
        f"From: Mail Delivery System <MAILER-DAEMON@{_ascii(hostname)}>\r\n"
        f"To: <{_ascii(envelope.sender)}>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{dsn_id}@{_ascii(hostname)}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"{human}"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        f"{per_message}{per_recipient}"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
    ).encode("ascii")
    return parts + headers + f"\r\n--{boundary}--\r\n".encode("ascii")
