"""PROXY protocol v1/v2 in front of the listener (``[listener] proxy_protocol = true``).

Twisted's HAProxy wrapper parses the header and makes ``getPeer()`` return
the client the balancer saw. Two things are added here:

- A header split across reads is gathered before the version is chosen (the
  wrapper needs 16 bytes in its first read, or drops the connection).
- A connection whose first bytes are not a valid header is answered
  ``421 4.7.0`` and closed, with a reason in the audit, instead of being
  dropped without a word.

The wrapped listener protocol greets at connect, before the header can have
been read, so the session decides on the client at its first command; see
`gateway.session.Session.greeting`.

Uses ``twisted.protocols.haproxy._wrapper``: Twisted exports only
``proxyEndpoint`` publicly, which cannot answer a bad header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Factory
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

from gateway.listener import ListenerFactory

if TYPE_CHECKING:
    from gateway.service import Gateway

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CHOOSE_AFTER = 16  # bytes Twisted's wrapper needs to tell v1 from v2


def could_be_header(start: bytes) -> bool:
    """Whether `start` is still a possible beginning of a v1 or v2 header."""
    return V1_SIGNATURE.startswith(start[:6]) or V2_SIGNATURE.startswith(start[:12])


class ProxyHeaderReader(HAProxyProtocolWrapper):
    def __init__(self, factory: Any, wrappedProtocol: Any) -> None:  # noqa: N803
        super().__init__(factory, wrappedProtocol)
        self._start = b""
        self._reading_header = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            self._start += data
            if len(self._start) < CHOOSE_AFTER and could_be_header(self._start):
                return
            data, self._start = self._start, b""
        self._reading_header = True
        try:
            super().dataReceived(data)
        finally:
            self._reading_header = False

    def loseConnection(self) -> None:  # noqa: N802
        if self._reading_header and self._proxyInfo is None:
            # Twisted's wrapper refuses the header this way; answer before closing.
            self._reading_header = False
            self.wrappedProtocol.proxy_header_invalid()
            return
        super().loseConnection()


class ProxyListenerFactory(HAProxyWrappingFactory):
    protocol = ProxyHeaderReader
    noisy = False


def listener_factory(gateway: Gateway) -> Factory:
    """The listener's factory, behind a PROXY header reader when the config asks for one."""
    proxied = gateway.config.listener.proxy_protocol
    factory = ListenerFactory(gateway, proxied=proxied)
    return ProxyListenerFactory(factory) if proxied else factory
