"""Unit tests of gateway/inbound/connections.py: connection counts and the drain on shutdown."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.config.model import ListenerConfig
from gateway.inbound.connections import Connections

LIMITS = ListenerConfig(max_connections=3, max_connections_per_client=2)


class Conn:
    def __init__(self, connections: Connections | None = None) -> None:
        self.connections = connections
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True
        if self.connections is not None:
            self.connections.release(self)


def test_counts_in_all_and_per_client():
    """admit counts a connection in all and for its client; release undoes both."""
    connections = Connections()
    a, b, c = Conn(), Conn(), Conn()
    connections.admit(a, "10.0.0.1")
    connections.admit(b, "10.0.0.1")
    connections.admit(c, "10.0.0.2")
    assert (len(connections), connections.from_client("10.0.0.1")) == (3, 2)
    assert connections.full(LIMITS) and connections.client_full(LIMITS, "10.0.0.1")
    assert not connections.client_full(LIMITS, "10.0.0.2")
    connections.release(a)
    assert (len(connections), connections.from_client("10.0.0.1")) == (2, 1)
    assert not connections.full(LIMITS) and a not in connections


def test_last_release_forgets_the_client():
    """A client with no open connection is not kept around (the table stays bounded)."""
    connections = Connections()
    a = Conn()
    connections.admit(a, "10.0.0.1")
    connections.release(a)
    connections.release(a)  # a second release changes nothing
    assert connections.from_client("10.0.0.1") == 0 and connections._per_client == {}


def test_client_named_later_counts_once():
    """Behind a balancer the client is named after admit (identify), and counted only once."""
    connections = Connections()
    a = Conn()
    connections.admit(a)
    assert connections.from_client("10.0.0.1") == 0 and len(connections) == 1
    connections.identify(a, "10.0.0.1")
    connections.identify(a, "10.0.0.1")
    assert connections.from_client("10.0.0.1") == 1
    connections.release(a)
    assert connections.from_client("10.0.0.1") == 0


def test_identify_ignores_a_connection_not_admitted():
    """A connection that was never admitted is not counted for its client."""
    connections = Connections()
    connections.identify(Conn(), "10.0.0.1")
    assert connections.from_client("10.0.0.1") == 0


def test_drain_with_nothing_open_fires_at_once():
    """No connection open: the drain is already over."""
    drained = Connections().drain(30, Clock().callLater)
    assert drained.called


def test_drain_fires_when_the_last_connection_closes():
    """The drain ends when the last open connection is released, and its timer is cancelled."""
    connections, clock = Connections(), Clock()
    a, b = Conn(), Conn()
    connections.admit(a, "10.0.0.1")
    connections.admit(b, "10.0.0.2")
    drained = connections.drain(30, clock.callLater)
    connections.release(a)
    assert not drained.called
    connections.release(b)
    assert drained.called and clock.getDelayedCalls() == []
    assert not a.shut_down and not b.shut_down


def test_drain_shuts_down_the_rest_after_the_grace_period():
    """After `grace` seconds every connection still open is told to shut down."""
    connections, clock = Connections(), Clock()
    a, b = Conn(connections), Conn(connections)
    connections.admit(a, "10.0.0.1")
    connections.admit(b)
    drained = connections.drain(30, clock.callLater)
    clock.advance(29)
    assert not a.shut_down and not drained.called
    clock.advance(1)
    assert a.shut_down and b.shut_down and drained.called
