"""The app's side of the interop suite: messages with a unique token, sent with smtplib."""

from __future__ import annotations

import itertools
import re
import smtplib

from mtas.common import SENDER

_numbers = itertools.count(1)


def token() -> bytes:
    """A string no other message of the run contains (it goes into the Message-ID)."""
    return f"interop-{next(_numbers)}-{id(_numbers):x}".encode()


def message(tag: bytes, body: bytes = b"", to: str = "ops@example.net") -> bytes:
    """A message with a `.`-leading line (dot stuffing) and the tag in its Message-ID."""
    return (
        b"From: " + SENDER.encode() + b"\r\nTo: " + to.encode() + b"\r\n"
        b"Subject: interop " + tag + b"\r\nMessage-ID: <" + tag + b"@example.com>\r\n"
        b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n\r\n"
        b".a line that starts with a dot\r\nbody of " + tag + b"\r\n" + body
    )


def tag_of(content: bytes) -> bytes:
    """The token in a message's Message-ID (what finds it in a maildir)."""
    found = re.search(rb"Message-ID: <([^@>]+)@", content)
    assert found, content[:200]
    return found.group(1)


def as_stored(content: bytes) -> bytes:
    """What a maildir holds of `content`: LF line ends."""
    return content.replace(b"\r\n", b"\n")


def send(
    port: int,
    content: bytes,
    rcpts: list[str] | None = None,
    sender: str = SENDER,
    mail_options: tuple[str, ...] = (),
) -> tuple[int, bytes]:
    """One transaction; the reply to DATA, or the first refusal (MAIL, or every RCPT)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("app.interop.test")
        code, text = client.mail(sender, list(mail_options))
        if code != 250:
            return code, text
        replies = [client.rcpt(rcpt) for rcpt in rcpts or ["ops@example.net"]]
        if not any(code == 250 for code, _ in replies):
            return replies[0]
        return client.data(content)


def send_many(port: int, contents: list[bytes]) -> list[tuple[int, bytes]]:
    """One message after another over one app connection; every reply to DATA."""
    replies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("app.interop.test")
        for content in contents:
            client.mail(SENDER)
            client.rcpt("ops@example.net")
            replies.append(client.data(content))
    return replies
