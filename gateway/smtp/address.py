"""Envelope addresses: the RFC 5321 section 4.1.2 grammar, strictly.

An address is kept exactly as the client wrote it inside the angle brackets;
policy evaluates that text and the upstream receives that same text, so nothing
is reinterpreted between the two. Source routes are refused, non-ASCII needs
SMTPUTF8 (not offered), and the size limits of section 4.5.3.1 are enforced.
Pure: no reactor, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from gateway.smtp import replies
from gateway.smtp.replies import Reply

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL_PART = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})\Z")
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*\Z")


@dataclass(frozen=True)
class Address:
    """A mailbox as written by the client ("" is the null reverse-path ``<>``)."""

    text: str

    @property
    def is_null(self) -> bool:
        return self.text == ""

    @property
    def domain(self) -> str:
        return self.text.rpartition("@")[2].lower() if self.text else ""

    def for_matching(self) -> str:
        """The form policy globs are matched against: the same text, lower-cased."""
        return self.text.lower()

    def path(self) -> str:
        return f"<{self.text}>"


class AddressError(Exception):
    """An address that mailgate will not accept; carries the reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def parse_path(path: str, *, sender: bool) -> Address:
    """Parse ``<mailbox>`` (or ``<>`` when `sender`) into an `Address`.

    `path` is the text from the opening angle bracket to the closing one.
    Raises `AddressError` with the reply for the client.
    """
    bad = replies.BAD_SENDER if sender else replies.BAD_ADDRESS
    if len(path) < 2 or path[0] != "<" or path[-1] != ">":
        raise AddressError(bad)
    inner = path[1:-1]
    if not inner.isascii():
        raise AddressError(replies.NEED_SMTPUTF8)
    if inner == "":
        if sender:
            return Address("")
        raise AddressError(bad)
    if inner.startswith("@"):
        raise AddressError(replies.SOURCE_ROUTE)
    if len(path) > MAX_PATH:
        raise AddressError(bad.with_text("Path too long (RFC 5321 4.5.3.1.3)"))
    local, at, domain = inner.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(bad)
    if len(local) > MAX_LOCAL_PART:
        raise AddressError(bad.with_text("Local part too long (RFC 5321 4.5.3.1.1)"))
    if not _LOCAL_PART.match(local):
        raise AddressError(bad)
    if local.startswith('"') and "@" in local:
        # Legal, but a classic way to make two parsers disagree on the domain.
        raise AddressError(bad.with_text("Quoted local part containing '@' is not accepted"))
    if not _valid_domain(domain):
        raise AddressError(bad)
    return Address(inner)


def _valid_domain(domain: str) -> bool:
    if len(domain) > MAX_DOMAIN:
        return False
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
            if "%" in literal:  # ipaddress accepts zone identifiers; RFC 5321 has none
                return False
            try:
                return isinstance(ipaddress.ip_address(literal), ipaddress.IPv6Address)
            except ValueError:
                return False
        try:
            return isinstance(ipaddress.ip_address(literal), ipaddress.IPv4Address)
        except ValueError:
            return False
    return bool(_DOMAIN.match(domain))
