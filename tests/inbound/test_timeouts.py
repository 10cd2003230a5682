"""Unit tests of gateway/inbound/timeouts.py: a connection's time limits on the host's clock
(an in-memory transport, no sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.inbound.listener import ListenerFactory, SMTPServerProtocol
from gateway.inbound.timeouts import MIN_RATE_GRACE, TLS_CLOSE_GRACE
from gateway.smtp import replies
from tests.inbound.fakes import MESSAGE_OK, FakeHost, config

HEAD = b"EHLO a\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def connect(host: FakeHost, tls: str = "plain") -> tuple[SMTPServerProtocol, StringTransport]:
    protocol = ListenerFactory(host, tls=tls).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def closed_with(transport: StringTransport, reply: Any) -> bool:
    return transport.disconnecting and transport.value().endswith(reply.to_bytes())


def test_idle_timeout_is_reset_by_a_complete_command_only():
    """listener.idle_timeout: a command line restarts it; bytes without CRLF do not."""
    host = FakeHost(config(idle_timeout=10))
    protocol, transport = connect(host)
    host.reactor.advance(9)
    protocol.dataReceived(b"NOOP\r\n")
    host.reactor.advance(9)
    assert not transport.disconnecting
    protocol.dataReceived(b"NO")  # a slow drip: no complete command
    host.reactor.advance(1)
    assert closed_with(transport, replies.IDLE_TIMEOUT)
    assert protocol._close_reason == "idle timeout"


def test_no_limit_runs_while_the_upstream_answers_and_the_idle_clock_restarts_after():
    """Waiting on the upstream's reply to the final dot, neither the DATA nor the idle timer
    closes the connection (even past their deadlines); after the reply idle_timeout counts again."""
    host = FakeHost(config(idle_timeout=10, data_timeout=20, min_data_rate=0))
    protocol, transport = connect(host)
    protocol.dataReceived(HEAD)
    [delivery] = host.deliveries
    delivery.finish_reply = pending = defer.Deferred()
    protocol.dataReceived(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    host.reactor.advance(25)  # past the DATA timer's deadline of 20 s
    assert not transport.disconnecting
    pending.callback(MESSAGE_OK)
    assert transport.value().endswith(MESSAGE_OK.to_bytes())
    host.reactor.advance(9)
    assert not transport.disconnecting
    host.reactor.advance(1)
    assert closed_with(transport, replies.IDLE_TIMEOUT)


def test_a_lost_connection_leaves_no_timer_behind():
    """The connection's one timer is cancelled when it ends, whatever it was armed for."""
    host = FakeHost(config(idle_timeout=10))
    protocol, _ = connect(host)
    protocol.dataReceived(b"NOOP\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert host.reactor.getDelayedCalls() == []


def test_data_timeout_abandons_the_body_and_closes():
    """listener.data_timeout without body bytes: the delivery never gets the dot; 421 4.4.2."""
    host = FakeHost(config(data_timeout=20, min_data_rate=0))
    protocol, transport = connect(host)
    protocol.dataReceived(HEAD + b"Subject: x\r\n")
    host.reactor.advance(19)
    protocol.dataReceived(b"more\r\n")  # body bytes re-arm the timer
    host.reactor.advance(19)
    assert not transport.disconnecting
    host.reactor.advance(1)
    assert closed_with(transport, replies.IDLE_TIMEOUT)
    [delivery] = host.deliveries
    assert delivery.finished is None and protocol._close_reason == "data timeout"


def test_a_body_below_the_minimum_data_rate_is_cut_off_after_the_grace():
    """listener.min_data_rate is enforced after MIN_RATE_GRACE seconds of DATA, not before."""
    host = FakeHost(config(data_timeout=300, min_data_rate=100))
    protocol, transport = connect(host)
    protocol.dataReceived(HEAD)
    host.reactor.advance(MIN_RATE_GRACE - 1)
    protocol.dataReceived(b"x\r\n")  # 3 bytes in 29 s: too slow, but within the grace
    assert not transport.disconnecting
    host.reactor.advance(2)
    protocol.dataReceived(b"x\r\n")
    assert closed_with(transport, replies.DATA_TOO_SLOW)
    [delivery] = host.deliveries
    assert delivery.finished is None
    assert protocol._close_reason == "data rate below listener.min_data_rate"


def test_a_closing_tls_connection_is_aborted_after_the_close_grace():
    """An smtps:// connection that closes (here: no TLS context) is aborted TLS_CLOSE_GRACE later
    if the app never finishes the TLS close."""
    host = FakeHost(config())
    protocol, transport = connect(host, tls="smtps")
    assert closed_with(transport, replies.INTERNAL_ERROR) and not transport.disconnected
    host.reactor.advance(TLS_CLOSE_GRACE - 0.5)
    assert not transport.disconnected
    host.reactor.advance(0.5)
    assert transport.disconnected
