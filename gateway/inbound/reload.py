"""How a reload reaches an open session: at its next MAIL, and at RCPT or DATA of a transaction
that was already open (so NOOP cannot keep a withdrawn app or client relaying). Functions of
the `Session`, kept apart from its dialogue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.audit.events import Event
from gateway.inbound import starttls
from gateway.policy import rules as policy
from gateway.smtp import replies
from gateway.smtp.replies import Reply

if TYPE_CHECKING:
    from gateway.inbound.session import Session


def follow_reload(session: Session) -> Reply | None:
    """A reload reaches the session at its next MAIL: the new rules, apps and limits.

    An app the reload removed or changed must authenticate again (``530 5.7.0``; AUTH with
    the new settings, or ``535``); a client the new config no longer allows is refused.
    """
    if session.host.config is session.config:
        return None
    session.config = session.host.config
    dropped = session.login.follow(session.config.apps)
    if dropped is not None and starttls.identify(session) is None:
        session.log.info(
            Event.MAIL_REFUSED,
            app=dropped,
            limit=f"apps.{dropped} (removed or changed on reload)",
            reply=str(replies.AUTH_AGAIN),
        )
        return replies.AUTH_AGAIN
    if session.address is not None and not policy.client_allowed(session.config, session.address):
        session.allowed = False
        return replies.DENIED_COMMAND
    return None


def reload_reached_transaction(session: Session) -> Reply | None:
    """A reload also reaches an open transaction, at its next RCPT or DATA: kept open with
    NOOP, it would otherwise let a removed app or client add recipients at any time later.
    The transaction keeps the rules it started with; but if the reload removed or changed
    its app, or no longer allows its client, it ends (its ``message.result`` says why) and
    the session follows the reload at once (``530 5.7.0`` / ``503 5.7.1``)."""
    current = session.host.config
    if current is session.config:
        return None
    app_lost = session.login.loses_app(current.apps)
    client_lost = session.address is not None and not policy.client_allowed(
        current, session.address
    )
    if not (app_lost or client_lost):
        return None
    if session.transaction is not None:
        session._abandon("config reloaded: the app or the client lost its standing")
    return follow_reload(session)
