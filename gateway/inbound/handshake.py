"""The TLS handshake of one app connection, as the listener protocol drives it.

On a ``smtps://`` entry the handshake starts at connect (the greeting waits for it); on a
``starttls://`` entry after the ``220`` to STARTTLS. Either way:

- **Injection** (the CVE-2011-0411 class): whatever the app pipelined after STARTTLS, in
  the same packet or before the handshake, is discarded, never executed inside TLS. The
  listener empties its command buffer when it starts the handshake; bytes that arrive
  after that belong to the TLS layer, which refuses anything but a handshake.
- ``listener.tls_handshake_timeout`` closes an app that opens TLS and stalls; the
  connection counts toward ``listener.max_connections`` from its TCP connect.
- A handshake that does not complete is one ``session.tls_failed`` with the reason
  (the certificate check, the version, the timeout), from the host's `ListenerTLS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from gateway.inbound import starttls
from gateway.smtp import replies

if TYPE_CHECKING:
    from gateway.inbound.host import ListenerTLS
    from gateway.inbound.listener import SMTPServerProtocol

HANDSHAKE_TIMEOUT = "TLS handshake timeout"


def start(protocol: SMTPServerProtocol, *, starttls_now: bool) -> None:
    """Begin the handshake: at connect (``smtps://``) or after the ``220`` to STARTTLS."""
    tls = protocol.host.listener_tls
    if tls is None:  # a TLS entry always has its context: fail closed if not
        protocol._close("no TLS context", replies.INTERNAL_ERROR)
        return
    protocol._lines.take_all()  # pipelined after STARTTLS: discarded, never run inside TLS
    protocol._handshake = Handshake(protocol, tls)
    protocol._handshake.begin(starttls_now=starttls_now)


def completed(protocol: SMTPServerProtocol) -> None:
    """The transport's handshake completed: the session starts afresh over TLS (RFC 3207
    section 4.2), ``smtps://`` greets now, and the idle timeout runs."""
    handshake, session = protocol._handshake, protocol.session
    if handshake is None or not handshake.running or session is None:
        return
    try:
        starttls.established(session, handshake.completed())
    except Exception:  # a bug must cost one session a 421, never a silent drop
        protocol._internal_error(Failure())
        return
    if protocol.tls == "smtps":
        protocol._reply(session.greeting())
    protocol.timeouts.idle()


class Handshake:
    """One connection's TLS handshake: under way, done, or failed (once)."""

    def __init__(self, protocol: SMTPServerProtocol, tls: ListenerTLS) -> None:
        self._protocol = protocol
        self._tls = tls
        self.running = False
        self._timed_out = False

    def begin(self, *, starttls_now: bool) -> None:
        """Start the handshake (STARTTLS: insert TLS into the transport) and its timer."""
        protocol = self._protocol
        self.running = True
        if starttls_now:
            protocol.transport.startTLS(self._tls.creator())
        protocol.timeouts.arm(protocol._limits.tls_handshake_timeout, self._expired)

    def completed(self) -> starttls.ClientTLS:
        """The handshake is done: what the session's audit records of it."""
        self.running = False
        return self._tls.facts(self._protocol.transport.getHandle())

    def _expired(self) -> None:
        protocol = self._protocol
        self._timed_out = True
        self.lost(None)
        protocol._closing = True
        protocol._close_reason = HANDSHAKE_TIMEOUT
        protocol.transport.abortConnection()

    def lost(self, reason: Failure | None) -> None:
        """The connection ended, or the timer expired, before the handshake completed."""
        if not self.running:
            return
        self.running = False
        session = self._protocol.session
        if session is None:
            return
        if self._timed_out:
            text = HANDSHAKE_TIMEOUT
        else:
            error = reason.value if reason is not None else None
            text = self._tls.failure(_handle(self._protocol), error)
        starttls.failed(session, text)


def _handle(protocol: Any) -> Any:
    get = getattr(protocol.transport, "getHandle", None)
    try:
        return get() if get is not None else None
    except Exception:  # noqa: BLE001 - a transport without TLS: no connection to explain
        return None
