"""The trace a session writes into each message, and the SIZE the upstream is told. Pure.

At a transaction's first accepted recipient the session makes its one
`gateway.policy.headers.HeaderRewriter` here: the rule's header edits and the gateway's trace
(`gateway.policy.trace`), so header edits and trace go out by one path in both delivery modes
(relay: to the upstream as the body streams; queue: into the spool, and from it unchanged).

The Received field names the app's HELO, its address (behind a PROXY header, the one the
header named: `Session.client`), ``listener.hostname``, whether it authenticated, the session
id of the audit records and the time; ``listener.add_received = false`` leaves it out.

The app's SIZE (RFC 1870) is what it sends; the upstream is told that plus what the trace may
add (`Trace.most_added`, an upper bound: Date and Message-ID are added only when missing).
``listener.max_message_size`` bounds what the app sends, not the trace's few hundred octets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.config.headers import HeaderEdits
from gateway.policy.headers import HeaderRewriter
from gateway.policy.trace import (
    Trace,
    date_field,
    message_id_field,
    protocol,
    received_field,
)
from gateway.smtp.commands import MailFrom

if TYPE_CHECKING:
    from gateway.inbound.session import Session


def message_trace(session: Session, clock: Callable[[], float] = time.time) -> Trace:
    """The trace fields of the session's next message, stamped now."""
    listener = session.config.listener
    when = clock()
    received = b""
    if listener.add_received:
        received = received_field(
            helo=session.helo,
            client_ip=session.client,
            hostname=listener.hostname,
            with_=protocol(esmtp=session.esmtp, authenticated=session.app is not None),
            id_=session.session_id,
            when=when,
        )
    return Trace(received, date_field(when), message_id_field(listener.hostname, when))


def rewriter(session: Session, edits: HeaderEdits | None) -> HeaderRewriter:
    """The header edits and the trace of one transaction."""
    return HeaderRewriter(edits, message_trace(session))


def upstream_mail(mail: MailFrom, headers: HeaderRewriter) -> MailFrom:
    """The app's MAIL as the upstream gets it: SIZE allows for what the gateway adds."""
    if mail.size is None or headers.trace is None:
        return mail
    return replace(mail, size=mail.size + headers.trace.most_added)
