"""Unit tests of gateway/inbound/smtps.py: on an smtps:// entry a client outside allowed_clients
is closed at connect, before any TLS, and audited; an allowed one, or any behind a balancer,
gets the TLS layer (in-memory transports, no sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from gateway.inbound.admission import NO_TLS_STARTED
from gateway.inbound.listener import ListenerFactory
from gateway.inbound.proxy import listener_factory
from gateway.inbound.smtps import CLOSED_BEFORE_TLS, DeniedBeforeTLS, ImplicitTLSFactory
from tests.inbound.fakes import FakeHost, config

SMTPS = {"listen": "smtps://127.0.0.1:465", "tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}


@implementer(IOpenSSLServerConnectionCreator)
class NoConnections:
    """A server connection creator these tests never reach (no TLS connection is made)."""

    def serverConnectionForTLS(self, protocol: Any) -> Any:  # noqa: N802 (Twisted's name)
        raise AssertionError("no TLS connection in these tests")


class StubTLS:
    """A `ListenerTLS` with that creator."""

    def creator(self) -> Any:
        return NoConnections()


def host(**listener: Any) -> FakeHost:
    h = FakeHost(config({"listener": {"hostname": "mailgate.test", **SMTPS, **listener}}))
    h.listener_tls = StubTLS()
    return h


def factory(h: FakeHost, screen: bool = True) -> ImplicitTLSFactory:
    return ImplicitTLSFactory(h, ListenerFactory(h, tls="smtps"), screen=screen)


def peer(address: str) -> IPv4Address:
    return IPv4Address("TCP", address, 40000)


def test_a_denied_client_is_closed_at_connect_without_a_byte_and_audited():
    """Outside allowed_clients: nothing written, the connection closed, and session.opened
    (not allowed), session.denied (no TLS started, no reply) and session.closed."""
    h = host()
    protocol = factory(h).buildProtocol(peer("192.0.2.7"))
    assert isinstance(protocol, DeniedBeforeTLS)
    transport = StringTransport(peerAddress=peer("192.0.2.7"))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x16\x03\x01")  # a ClientHello that crossed the close: ignored
    assert transport.value() == b"" and transport.disconnecting
    [opened] = h.events("session.opened")
    assert (opened["client_ip"], opened["allowed"]) == ("192.0.2.7", False)
    [denied] = h.events("session.denied")
    assert denied["limit"] == "listener.allowed_clients" and denied["reason"] == NO_TLS_STARTED
    assert "reply" not in denied and denied["session_id"] == opened["session_id"]
    [closed] = h.events("session.closed")
    assert closed["reason"] == CLOSED_BEFORE_TLS and closed["client_tls_version"] is None
    assert h.metrics.sessions == [False] and len(h.connections) == 0


def test_an_allowed_client_gets_the_tls_layer():
    """Inside allowed_clients: TLS around the listener protocol, and no event yet."""
    h = host()
    protocol = factory(h).buildProtocol(peer("127.0.0.1"))
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    assert h.captured.events == []


def test_the_current_config_decides_after_a_reload():
    """allowed_clients is the host's config at accept: a reload that allows the client lets it in."""
    h = host()
    f = factory(h)
    assert isinstance(f.buildProtocol(peer("192.0.2.7")), DeniedBeforeTLS)
    h.config = config(
        {"listener": {"hostname": "mailgate.test", **SMTPS, "allowed_clients": ["192.0.2.0/24"]}}
    )
    assert isinstance(f.buildProtocol(peer("192.0.2.7")), TLSMemoryBIOProtocol)


def test_behind_a_balancer_nothing_is_screened_at_accept():
    """proxy_protocol: the peer at accept is the balancer; the TLS layer is built whatever its
    address, and the session decides on the header's client at its first command."""
    h = host(proxy_protocol=True, proxy_trusted=["192.0.2.0/24"])
    outer = listener_factory(h, "smtps")
    tls = outer.wrappedFactory  # type: ignore[attr-defined]
    assert isinstance(tls, ImplicitTLSFactory) and tls.screen is False
    assert isinstance(tls.buildProtocol(peer("192.0.2.7")), TLSMemoryBIOProtocol)
    assert isinstance(listener_factory(host(), "smtps"), ImplicitTLSFactory)
