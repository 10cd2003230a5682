"""The envelope as an upstream is sent it: the MAIL and RCPT lines. Pure: no reactor, no I/O.

Relay and queue build their lines here, so both send the same bytes: each address as
`Address.path()` writes it (``<text>``, the text exactly as the app wrote it), ``SIZE=`` and
``BODY=`` only where the upstream offers SIZE and 8BITMIME, and UTF-8 with the ``SMTPUTF8``
parameter only where an address needs it and the upstream offers it (RFC 6531); otherwise ASCII.
An address with a control character (CR, LF, NUL, ...) is never sent: the session refuses
one from an app, so only a spool edited by hand can hold one, and it must not inject a command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.replies import Reply


def unsendable(address: str) -> Reply | None:
    """The refusal for an address no upstream may be sent (a control character), else None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        return replies.BAD_SPOOLED_ADDRESS
    return None


def needs_smtputf8(addresses: Iterable[str]) -> bool:
    """True when any address is not ASCII (RFC 6531: the transaction needs SMTPUTF8)."""
    return any(not a.isascii() for a in addresses)


def refusal(address: str, capabilities: Mapping[str, str]) -> Reply | None:
    """Why `address` cannot go to an upstream with these EHLO `capabilities`, or None."""
    if (bad := unsendable(address)) is not None:
        return bad
    if not address.isascii() and "SMTPUTF8" not in capabilities:
        return replies.UPSTREAM_NO_SMTPUTF8
    return None


def mail_line(
    sender: str,
    capabilities: Mapping[str, str],
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
) -> bytes:
    """``MAIL FROM:<sender>`` with the parameters this upstream offers."""
    line = f"MAIL FROM:{Address(sender).path()}"
    if size is not None and "SIZE" in capabilities:
        line += f" SIZE={size}"
    if body and "8BITMIME" in capabilities:
        line += f" BODY={body}"
    if smtputf8:
        line += " SMTPUTF8"
    return line.encode("utf-8" if smtputf8 else "ascii")


def rcpt_line(recipient: str, *, smtputf8: bool = False) -> bytes:
    """``RCPT TO:<recipient>``."""
    return f"RCPT TO:{Address(recipient).path()}".encode("utf-8" if smtputf8 else "ascii")
