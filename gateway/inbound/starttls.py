"""TLS in an app session: STARTTLS on ``starttls://`` entries (RFC 3207), ``smtps://`` from the
first byte (RFC 8314), and a client certificate as the app's identity. Functions of the
`Session`, kept apart from its dialogue; the bytes and the handshake are the listener's
(`gateway.inbound.handshake`).

- On a ``starttls://`` entry, STARTTLS is offered until TLS is up; AUTH is offered only
  after it, and attempted before it gets ``530 5.7.0`` (RFC 4954 section 4), whatever
  ``listener.require_tls`` says; with ``require_tls``, MAIL before it gets ``530 5.7.0`` too.
- After the handshake the session forgets everything said before it (RFC 3207 section 4.2):
  the app must greet again. A second STARTTLS gets ``503 5.5.1``.
- A client certificate verified against ``listener.client_ca_file`` whose SHA-256 is listed in
  ``apps.NAME.client_cert_sha256`` identifies that app for the session, as AUTH would; a
  verified certificate that no app lists identifies nobody.
- A plain ``HOST:PORT`` entry behaves as it always did: no STARTTLS, AUTH in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.audit.events import Event
from gateway.inbound import auth as app_auth
from gateway.inbound.auth import AppLogin
from gateway.smtp import replies
from gateway.smtp.replies import Reply

if TYPE_CHECKING:
    from gateway.inbound.session import Session


@dataclass(frozen=True)
class ClientTLS:
    """What the audit records of an app's TLS session."""

    version: str  # OpenSSL's name: "TLSv1.3"
    cipher: str
    cert_sha256: str | None = None  # the client certificate's (verified), when one was presented


def audit_fields(tls: ClientTLS | None) -> dict[str, Any]:
    """``client_tls_version`` and ``client_tls_cipher`` (None on a plain session), and
    ``client_cert_sha256`` when a certificate was presented."""
    fields: dict[str, Any] = {
        "client_tls_version": tls.version if tls else None,
        "client_tls_cipher": tls.cipher if tls else None,
    }
    if tls is not None and tls.cert_sha256 is not None:
        fields["client_cert_sha256"] = tls.cert_sha256
    return fields


def _before_tls(session: Session) -> bool:
    """A ``starttls://`` entry's session that has not started TLS yet."""
    return session.listen_tls == "starttls" and session.tls is None


def ehlo_keywords(session: Session) -> list[str]:
    """The TLS and AUTH lines of the EHLO reply."""
    keywords = ["STARTTLS"] if _before_tls(session) else []
    passwords = any(app.password_hash for app in session.config.apps.values())
    if passwords and not _before_tls(session):  # certificate-only apps: nothing to AUTH with
        keywords.append("AUTH " + " ".join(app_auth.MECHANISMS))
    return keywords


def starttls(session: Session, argument: str) -> Reply:
    """``STARTTLS``: ``220`` and the listener starts the handshake, or why not."""
    if session.listen_tls != "starttls":
        return replies.SYNTAX_UNKNOWN  # a plain entry, as before; smtps:// is TLS already
    if session.tls is not None or session.starting_tls:
        return replies.STARTTLS_TWICE
    if argument:
        return replies.STARTTLS_NO_ARGUMENT
    if session.helo is None:
        return replies.NEED_HELO
    session._reset("STARTTLS")
    session.starting_tls = True
    return replies.STARTTLS_READY


def auth_refusal(session: Session) -> Reply | None:
    """AUTH before TLS on a ``starttls://`` entry: never, whatever ``require_tls`` says."""
    return replies.AUTH_NEEDS_TLS if _before_tls(session) else None


def mail_refusal(session: Session) -> Reply | None:
    """MAIL before TLS on a ``starttls://`` entry with ``listener.require_tls``."""
    if _before_tls(session) and session.config.listener.require_tls:
        return replies.TLS_REQUIRED
    return None


def established(session: Session, tls: ClientTLS) -> None:
    """The handshake completed: a fresh start over TLS, and the certificate's app, if listed."""
    session.starting_tls = False
    session.tls = tls
    session.helo, session.esmtp = None, False
    session.login = AppLogin(session.config.apps, session.host, session.log)
    session.host.metrics.tls_session(tls.version)
    identify(session)


def identify(session: Session) -> str | None:
    """The app the session's verified client certificate identifies (now authenticated), if any."""
    digest = session.tls.cert_sha256 if session.tls is not None else None
    if digest is None:
        return None
    for app in session.config.apps.values():
        if digest in app.client_cert_sha256:
            session.login.app = app.name
            session.log.info(
                Event.SESSION_AUTHENTICATED,
                client_ip=session.client,
                app=app.name,
                mechanism="client certificate",
                client_cert_sha256=digest,
            )
            return app.name
    return None


def failed(session: Session, reason: str) -> None:
    """The handshake did not complete: ``session.tls_failed``."""
    session.starting_tls = False
    session.log.info(
        Event.SESSION_TLS_FAILED,
        client_ip=session.client,
        client_port=session.client_port,
        listen=session.listen_tls,
        reason=reason,
    )
