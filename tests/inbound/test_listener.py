"""Unit tests of gateway/inbound/listener.py with an in-memory host: connection accounting, the drain."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.inbound.listener import ListenerFactory
from gateway.smtp import replies
from gateway.smtp.replies import TOO_MANY_CONNECTIONS, TOO_MANY_FROM_CLIENT
from tests.inbound.fakes import FakeHost, config


def connect(host: FakeHost, client: str = "127.0.0.1", port: int = 40000):
    protocol = ListenerFactory(host).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", client, port))
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


def test_connection_past_max_connections_is_refused_and_not_counted():
    """Past listener.max_connections: 421 4.7.0, ``connection.refused``, and no session."""
    host = FakeHost(config(max_connections=2))
    first, _ = connect(host, port=1)
    connect(host, port=2)
    refused, transport = connect(host, port=3)
    assert transport.value() == TOO_MANY_CONNECTIONS.to_bytes() and refused.session is None
    assert len(host.connections) == 2
    [event] = host.events("connection.refused")
    assert (event["limit"], event["client_port"]) == ("listener.max_connections", 3)
    lose(refused)
    assert len(host.connections) == 2
    lose(first)
    assert len(host.connections) == 1


def test_connection_past_the_per_client_limit_is_refused():
    """Past listener.max_connections_per_client from one address: 421 4.7.0; others still come in."""
    host = FakeHost(config(max_connections_per_client=1))
    connect(host, "127.0.0.1")
    _, transport = connect(host, "127.0.0.1")
    assert transport.value() == TOO_MANY_FROM_CLIENT.to_bytes()
    _, other = connect(host, "127.0.0.2")
    assert other.value().startswith(b"220 ")
    assert host.connections.from_client("127.0.0.1") == 1


def test_closed_connection_is_released_after_session_closed():
    """A closed connection no longer counts; its ``session.closed`` was written first."""
    host = FakeHost(config())
    protocol, transport = connect(host)
    assert transport.value().startswith(b"220 mailgate.test")
    assert protocol in host.connections
    lose(protocol)
    assert protocol not in host.connections and host.connections.from_client("127.0.0.1") == 0
    assert host.events("session.closed")[0]["reason"] == "connection lost"


def test_drain_closes_sessions_still_open_after_the_grace_period():
    """On shutdown a session still open after the grace period gets 421 4.3.2; then the drain ends."""
    host = FakeHost(config())
    protocol, transport = connect(host)
    drained = host.connections.drain(5, host.reactor.callLater)
    host.reactor.advance(5)
    assert transport.value().endswith(replies.SHUTTING_DOWN.to_bytes())
    assert transport.disconnecting and not drained.called
    lose(protocol)
    assert drained.called
    assert host.events("session.closed")[0]["reason"] == "gateway shutdown"
