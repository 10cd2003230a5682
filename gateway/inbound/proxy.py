"""PROXY protocol v1/v2 in front of the listener (``[listener] proxy_protocol = true``).

Twisted's HAProxy wrapper makes ``getPeer()`` return the client the balancer
saw, once the header is parsed. The header phase is done here, with Twisted's
v1/v2 parsers, because the wrapper's own falls short for a mail gateway:

- it needs 16 bytes in its first read, else drops the connection: here a
  header split across reads is gathered first;
- it drops a connection with a bad header without a word: here the listener
  answers ``421 4.7.0`` and the audit says why;
- its v1 parser takes any word as an address, and a bad port escapes as a
  ``ValueError``: here the source must be an IP address and a port;
- it believes a header from anyone: here only a TCP peer inside
  ``listener.proxy_trusted`` (a balancer) may send one. Any other peer is refused
  with ``421 4.7.0`` at its first bytes, before they are parsed, whatever they claim
  (v1 or v2, TCP4, TCP6, an IPv4-mapped address).

The wrapped listener protocol greets at connect, before the header can have
been read, so the session decides on the client at its first command; see
`gateway.inbound.session.Session.greeting`.

Uses ``twisted.protocols.haproxy``'s private modules: Twisted exports only
``proxyEndpoint``, which cannot answer a bad header.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from gateway.inbound.host import ListenerHost
from gateway.inbound.listener import ListenerFactory, SMTPServerProtocol
from gateway.inbound.smtps import ImplicitTLSFactory

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CHOOSE_AFTER = 16  # bytes needed to tell v1 from v2 (a v2 header's fixed part)


def could_be_header(start: bytes) -> bool:
    """Whether `start` is still a possible beginning of a v1 or v2 header."""
    return V1_SIGNATURE.startswith(start[:6]) or V2_SIGNATURE.startswith(start[:12])


def choose_parser(start: bytes) -> V1Parser | V2Parser | None:
    """The parser for a header starting with `start` (`CHOOSE_AFTER` bytes or a non-header)."""
    if start.startswith(V2_SIGNATURE) and len(start) >= CHOOSE_AFTER and start[12] & 0xF0 == 0x20:
        return V2Parser()
    if start.startswith(V1_SIGNATURE):
        return V1Parser()
    return None


def acceptable(info: ProxyInfo) -> bool:
    """A source, when given (not for UNKNOWN/LOCAL), must be an IP address and a port."""
    source = info.source
    if source is None:
        return True
    try:
        ipaddress.ip_address(getattr(source, "host", ""))
    except ValueError:
        return False
    return isinstance(getattr(source, "port", None), int)


@implementer(IHandshakeListener)
class ProxyHeaderReader(HAProxyProtocolWrapper):
    """The header phase; then a pass-through. On an ``smtps://`` entry it wraps the TLS layer
    (the header comes before the ClientHello), after STARTTLS the TLS layer wraps it."""

    wrappedProtocol: Any  # noqa: N815 (Twisted's name): the listener, or TLS around it

    def __init__(self, factory: Any, wrappedProtocol: Any) -> None:  # noqa: N803
        super().__init__(factory, wrappedProtocol)
        self._start = b""
        self._refused = False

    @property
    def listener(self) -> SMTPServerProtocol:
        wrapped = self.wrappedProtocol
        if isinstance(wrapped, TLSMemoryBIOProtocol):
            wrapped = wrapped.wrappedProtocol
        return wrapped  # type: ignore[no-any-return]

    def handshakeCompleted(self) -> None:  # noqa: N802 (after STARTTLS: TLS wraps this reader)
        self.listener.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        if not self.listener.proxy_peer_trusted:
            self._refused = True
            self.listener.proxy_peer_untrusted()
            return
        if self._parser is None:
            self._start += data
            if len(self._start) < CHOOSE_AFTER and could_be_header(self._start):
                return
            data, self._start = self._start, b""
            self._parser = choose_parser(data)
            if self._parser is None:
                self._refuse()
                return
        try:
            info, remaining = self._parser.feed(data)
        except (InvalidProxyHeader, ValueError, UnicodeDecodeError):
            self._refuse()
            return
        if info is None:
            return
        if not acceptable(info):
            self._refuse()
            return
        self._proxyInfo = info
        self.listener.proxy_header_received()  # counted now, not at the first command
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuse(self) -> None:
        self._parser, self._refused = None, True
        self.listener.proxy_header_invalid()


class ProxyListenerFactory(HAProxyWrappingFactory):
    protocol = ProxyHeaderReader
    noisy = False


def listener_factory(host: ListenerHost, tls: str = "plain") -> Factory[Any]:
    """The factory of one listener entry: TLS around the listener on an ``smtps://`` entry,
    behind a PROXY header reader when the host's config asks for one."""
    proxied = host.config.listener.proxy_protocol
    factory: Factory[Any] = ListenerFactory(host, proxied=proxied, tls=tls)
    if tls == "smtps":
        # A denied client is closed before any TLS when its address is known at accept; behind
        # a balancer the peer is the balancer and the session decides after the handshake, at
        # the first command, as on every proxied entry (see gateway.inbound.smtps).
        factory = ImplicitTLSFactory(host, factory, screen=not proxied)
    return ProxyListenerFactory(factory) if proxied else factory
