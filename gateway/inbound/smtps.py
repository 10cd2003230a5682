"""``smtps://`` entries (RFC 8314): TLS from the first byte around the listener protocol, and no
handshake at all for a client outside ``listener.allowed_clients``.

A denied client on a plain or ``starttls://`` entry is greeted ``554 5.7.1`` in clear. On an
``smtps://`` entry nothing can be said in clear (the client waits for a ServerHello), and an
answer inside TLS would cost us a handshake — the server's private-key operation — for each
connection of a client that may never send mail. So when the peer's address is the client's
at accept (``listener.proxy_protocol`` off), a denied client's TCP connection is closed at
once, before a TLS byte is read or written: ``session.opened`` (``allowed: false``),
``session.denied`` with a ``reason`` saying no TLS was started (and no ``reply``: none was
sent), ``session.closed``.

Behind a balancer (``proxy_protocol`` on) the TCP peer at accept is the balancer: the
client's address comes in the PROXY header, and the session decides on it at its first
command (`gateway.inbound.proxy`, `gateway.inbound.session.Session.greeting`) — after the
handshake, as for every proxied entry. Nothing is screened here then.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.inbound.admission import admit, open_session
from gateway.inbound.host import ListenerHost
from gateway.inbound.session import Session, new_session_id

CLOSED_BEFORE_TLS = "denied before TLS"  # session.closed's reason


class ImplicitTLSFactory(TLSMemoryBIOFactory):
    """TLS around `wrapped` (the listener's factory); with `screen`, a client outside
    ``listener.allowed_clients`` gets `DeniedBeforeTLS` instead (closed, no TLS)."""

    def __init__(self, host: ListenerHost, wrapped: Factory[Any], *, screen: bool) -> None:
        assert host.listener_tls is not None  # the gateway makes it for any TLS entry
        super().__init__(host.listener_tls.creator(), False, wrapped)
        self.host = host
        self.screen = screen

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted's name)
        if self.screen and not admit(self.host.config, getattr(addr, "host", "")).allowed:
            return DeniedBeforeTLS(self.host)
        return super().buildProtocol(addr)


class DeniedBeforeTLS(Protocol):
    """A denied client's connection to an ``smtps://`` entry: audited as a denied session and
    closed at connect, without a byte written (no TLS, no SMTP reply)."""

    transport: Any

    def __init__(self, host: ListenerHost) -> None:
        self.host = host

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", "unknown"), getattr(peer, "port", 0)
        session = Session(self.host, new_session_id(), host, port, "smtps")
        open_session(session, before_tls=True)
        self.transport.loseConnection()
        session.close(CLOSED_BEFORE_TLS)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """A ClientHello sent before the close reached the client: never read."""
