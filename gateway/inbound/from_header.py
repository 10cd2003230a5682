"""The From: header check (``apps.<name>.check_from_header``). Pure.

An app that authenticated may send only as the senders it owns (``apps.<name>.senders``);
with ``check_from_header`` that holds for every address in the message's From: header too.
The session asks once the headers are in, before any body byte leaves the gateway.

RFC 5322 3.6 allows exactly one From field: none, or more than one, is refused. The one
field must parse as an address list without defects (RFC 5322 3.4: groups, comments,
quoted names and encoded words in names allowed; the obsolete syntax not) and name at
least one mailbox, and the app must own every mailbox — as the strict parser
(`email.headerregistry`) reads it, and as the lenient one (`email.utils.getaddresses`,
which some receivers use) reads it too, so a value the two read differently cannot pass.
"""

from __future__ import annotations

from email.errors import NonASCIILocalPartDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import getaddresses

from gateway.config.model import App
from gateway.policy.rules import sender_owned

_REGISTRY = HeaderRegistry()


def from_checked(app: App | None) -> bool:
    """Whether the From: check applies to messages from `app`."""
    return app is not None and app.check_from_header


def from_problem(
    app: App | None, header_from: str | None, count: int = 1, truncated: bool = False
) -> str | None:
    """Why `app` may not send a message whose From fields are these; None when it may.

    `header_from` is the first From field's value (unfolded), `count` the number of From
    fields (at least), `truncated` whether the value was longer than what was kept.
    """
    if app is None or not app.check_from_header:
        return None
    if count > 1:
        return "the message has more than one From field (RFC 5322 allows one)"
    if count == 0 or header_from is None:
        return "the message has no From field"
    if truncated:
        return "the From field is too long to check"
    addresses = mailboxes(header_from)
    if addresses is None:
        return "the From field is not a well-formed address list"
    if not addresses:
        return "the From field names no address"
    foreign = [a for a in addresses if not sender_owned(app.senders, a)]
    if foreign:
        return f"the From field names {len(foreign)} address(es) outside apps.{app.name}.senders"
    return None


def from_allowed(app: App | None, header_from: str | None) -> bool:
    """Whether `app` may send a message with one From field whose value is `header_from`."""
    return from_problem(app, header_from, 0 if header_from is None else 1) is None


def mailboxes(value: str) -> list[str] | None:
    """Every address a From value names, read strictly and leniently; None when unparsable."""
    try:
        header = _REGISTRY("from", value)
    except Exception:  # noqa: BLE001 - the stdlib parser on hostile input: unparsable
        return None
    if not isinstance(header, AddressHeader):
        return None
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    strict = [a.addr_spec for a in header.addresses]
    if defects or any(not a.domain or not a.username for a in header.addresses):
        return None
    lenient = [address for _, address in getaddresses([value]) if address]
    return strict + [a for a in lenient if a not in strict]
