"""The From: header check (``apps.<name>.check_from_header``). Pure.

An app that authenticated may send only as the senders it owns (``apps.<name>.senders``);
with ``check_from_header`` that holds for every address in the message's From: header too.
The session asks once the headers are in, before any body byte leaves the gateway.
"""

from __future__ import annotations

from email.utils import getaddresses

from gateway.config.model import App
from gateway.policy.rules import sender_owned


def from_allowed(app: App | None, header_from: str | None) -> bool:
    """Whether `app` may send a message whose From: header is `header_from`.

    True when no app authenticated or the app's From: header is not checked; else the
    header must name at least one address, and the app must own each of them.
    """
    if app is None or not app.check_from_header:
        return True
    header = header_from or ""
    addresses = [a for _, a in getaddresses([header])] if header else []
    return bool(addresses) and all(sender_owned(app.senders, a) for a in addresses)
