"""The status server's limits and /readyz's two answers, on in-memory transports with a fake clock."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import server

from gateway.config.model import LOOPBACK, MetricsConfig
from gateway.daemon import status
from gateway.daemon.health import Attempt, Readiness
from gateway.daemon.metrics import Metrics


def gateway(details_from: tuple[Any, ...] = LOOPBACK, failing: bool = True) -> Any:
    readiness = Readiness()
    readiness.listening = readiness.config_loaded = True
    if failing:
        readiness.attempted("up", Attempt(False, 0.0, "AUTH PLAIN as relay@example.test refused"))
    return SimpleNamespace(
        readiness=readiness,
        metrics=Metrics(),
        config=SimpleNamespace(metrics=MetricsConfig(details_from=details_from)),
        probe_upstreams=lambda: None,
    )


class Connections:
    """Channels of one StatusSite, each on a StringTransport, on a fake clock."""

    def __init__(self, gw: Any = None, peer: Any = None) -> None:
        self.clock = Clock()
        self.site = status.site(gw or gateway(), self.clock)
        self.peer = peer or IPv4Address("TCP", "127.0.0.1", 40000)

    def open(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(self.peer)
        transport = StringTransport(peerAddress=self.peer)
        channel.makeConnection(transport)
        return channel, transport


def response(transport: StringTransport) -> tuple[int, bytes]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_get_readyz_is_answered_and_the_connection_closed():
    """A plain GET is served, with Connection: close: one request per connection."""
    channel, transport = Connections(gateway(failing=False)).open()
    channel.dataReceived(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response(transport) == (200, b"ready\n")
    assert b"connection: close" in transport.value().lower()
    assert transport.disconnecting


@pytest.mark.parametrize(
    "request_head,code",
    [
        (b"POST /readyz HTTP/1.1\r\nContent-Length: 209715200\r\n\r\n", 405),
        (b"PUT /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 405),
        (b"OPTIONS / HTTP/1.1\r\n\r\n", 405),
        (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9000000\r\n\r\n", 405),
        (b"GET /readyz HTTP/1.1\r\nContent-Length: 200000\r\n\r\n", 413),
        (b"GET /readyz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
    ],
)
def test_a_request_with_a_body_is_refused_before_any_body_is_read(request_head, code, monkeypatch):
    """Prevents a body being buffered or spooled to /tmp: refused at its headers, nothing stored."""
    stored: list[Any] = []
    monkeypatch.setattr(server.Request, "gotLength", lambda self, length: stored.append(length))
    channel, transport = Connections().open()
    channel.dataReceived(request_head + b"x" * 65536)
    assert response(transport)[0] == code
    assert b"100 Continue" not in transport.value()
    assert stored == [] and transport.disconnecting
    before = transport.value()
    channel.dataReceived(b"GET /readyz HTTP/1.1\r\n\r\n" + b"y" * 65536)  # nothing more is served
    assert transport.value() == before


def test_headers_dripping_in_do_not_extend_the_deadline():
    """Prevents a slow client (one header line now and then) holding a connection past the deadline."""
    connections = Connections()
    channel, transport = connections.open()
    channel.dataReceived(b"GET /readyz HTTP/1.1\r\n")
    for _ in range(9):
        connections.clock.advance(status.REQUEST_TIMEOUT / 10)
        channel.dataReceived(b"X-Drip: 1\r\n")
        assert not transport.disconnected
    connections.clock.advance(status.REQUEST_TIMEOUT / 10)
    assert transport.disconnected  # aborted
    channel.connectionLost(None)
    assert connections.site.open_channels == 0


def test_connections_over_the_cap_get_503_and_are_closed():
    """Prevents idle connections piling up: past MAX_CONNECTIONS each new one is refused at once."""
    connections = Connections()
    held = []
    for number in range(status.MAX_CONNECTIONS):
        connections.peer = IPv4Address("TCP", f"10.0.0.{number}", 40000)
        held.append(connections.open())
    assert connections.site.open_channels == status.MAX_CONNECTIONS
    channel, transport = connections.open()
    assert response(transport)[0] == 503 and transport.disconnecting
    channel.connectionLost(None)
    assert connections.site.open_channels == status.MAX_CONNECTIONS
    first, _ = held[0]
    first.connectionLost(None)
    channel, transport = connections.open()  # a freed place can be used again
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert response(transport) == (200, b"ok\n")


def test_oversized_headers_are_refused():
    """Headers over MAX_HEADER_BYTES get 400 and the connection closed."""
    channel, transport = Connections().open()
    channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * status.MAX_HEADER_BYTES)
    channel.dataReceived(b"\r\n\r\n")
    assert response(transport)[0] == 400 and transport.disconnecting


@pytest.mark.parametrize("query", [b"", b"?verbose=0", b"?details=1"])
def test_readyz_without_verbose_says_only_not_ready(query):
    """The plain answer carries no upstream name, username or reason."""
    channel, transport = Connections().open()
    channel.dataReceived(b"GET /readyz" + query + b" HTTP/1.1\r\n\r\n")
    assert response(transport) == (503, b"not ready\n")


@pytest.mark.parametrize(
    "peer,details_from,shown",
    [
        (IPv4Address("TCP", "127.0.0.1", 1), LOOPBACK, True),
        (IPv6Address("TCP", "::1", 1), LOOPBACK, True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 1), LOOPBACK, True),
        (IPv4Address("TCP", "10.1.2.3", 1), LOOPBACK, False),
        (IPv4Address("TCP", "10.1.2.3", 1), (ipaddress.ip_network("10.0.0.0/8"),), True),
        (IPv4Address("TCP", "127.0.0.1", 1), (), False),
    ],
)
def test_readyz_details_only_on_request_and_only_to_allowed_clients(peer, details_from, shown):
    """?verbose=1 lists the reasons for a client in details_from, and for nobody else."""
    channel, transport = Connections(gateway(details_from), peer).open()
    channel.dataReceived(b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n")
    code, body = response(transport)
    assert code == 503
    assert (b"relay@example.test" in body) == shown
    assert body.startswith(b"not ready\n")


def test_one_client_cannot_take_every_place():
    """Past MAX_PER_CLIENT connections from one address it gets 503; another address still gets in."""
    connections = Connections()
    for _ in range(status.MAX_PER_CLIENT):
        assert not connections.open()[1].disconnecting
    assert response(connections.open()[1])[0] == 503
    connections.peer = IPv4Address("TCP", "127.0.0.2", 40000)
    channel, transport = connections.open()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert response(transport) == (200, b"ok\n")
    channel.connectionLost(None)
    assert connections.site.per_client == {"127.0.0.1": status.MAX_PER_CLIENT}
