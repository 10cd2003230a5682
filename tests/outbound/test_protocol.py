"""The upstream wire protocol without sockets: a string transport and a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.outbound.protocol import MAX_UNCLAIMED_REPLIES, Lost, UpstreamProtocol
from gateway.outbound.scrub import REDACTED, Scrubber


class Transport(StringTransport):
    """A string transport that records STARTTLS and whether the connection was aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.tls_started = False
        self.aborted = False

    def startTLS(self, creator: Any) -> None:  # noqa: N802
        self.tls_started = True

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True


class Policy:
    """Stands in for `UpstreamTLS`: hands out a creator and never checks a peer here."""

    def creator(self) -> Any:
        return object()


def connected(timeout: float = 30) -> tuple[UpstreamProtocol, Transport, task.Clock]:
    clock = task.Clock()
    protocol = UpstreamProtocol(clock, timeout)
    transport = Transport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def outcome(d: defer.Deferred[Any]) -> Any:
    """What a Deferred fired with (a Failure for an error); fails if it has not fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def lose(protocol: UpstreamProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


def test_a_reply_split_across_reads_reaches_its_command_whole():
    """A reply that arrives in pieces fires the command's Deferred once, with every line."""
    protocol, transport, _ = connected()
    sent = protocol.send(b"EHLO gw")
    assert transport.value() == b"EHLO gw\r\n"
    protocol.dataReceived(b"250-up.example\r\n250-SIZE 10")
    assert not sent.called
    protocol.dataReceived(b"00\r\n250 8BITMIME\r\n")
    reply = outcome(sent)
    assert reply.code == 250 and reply.lines()[1:] == ["SIZE 1000", "8BITMIME"]


def test_pipelined_commands_get_their_replies_in_order():
    """Replies that arrive in one read are handed to the commands in the order they were sent."""
    protocol, _, _ = connected()
    mail, rcpt = protocol.send(b"MAIL FROM:<a@x>"), protocol.send(b"RCPT TO:<b@y>")
    protocol.dataReceived(b"250 2.1.0 OK\r\n550 5.1.1 No such user\r\n")
    assert (outcome(mail).code, outcome(rcpt).code) == (250, 550)


def test_a_reply_before_it_is_asked_for_is_kept_for_the_next_read():
    """The greeting may come before `read_reply`: it is kept, not lost."""
    protocol, _, _ = connected()
    protocol.dataReceived(b"220 up.example ESMTP\r\n")
    reply = outcome(protocol.read_reply())
    assert (reply.code, reply.text) == (220, "up.example ESMTP")


def test_too_many_unsolicited_replies_abort_the_connection():
    """A server that floods replies nobody asked for is cut off."""
    protocol, transport, _ = connected()
    protocol.dataReceived(b"250 ok\r\n" * MAX_UNCLAIMED_REPLIES)
    assert not transport.aborted
    protocol.dataReceived(b"250 ok\r\n")
    assert transport.aborted


def test_a_malformed_reply_aborts_and_fails_the_command_with_a_protocol_error():
    """A line that is no SMTP reply aborts; the waiting command fails saying so."""
    protocol, transport, _ = connected()
    sent = protocol.send(b"NOOP")
    protocol.dataReceived(b"hello there\r\n")
    assert transport.aborted
    lose(protocol)
    failure = outcome(sent)
    assert failure.check(Lost) and failure.value.reason.startswith("protocol error")


def test_a_silent_upstream_times_out_after_the_step_timeout():
    """No reply within `timeout` seconds aborts the connection and fails the command as a timeout."""
    protocol, transport, clock = connected(timeout=30)
    sent = protocol.send(b"NOOP")
    clock.advance(29)
    assert not transport.aborted
    clock.advance(1)
    assert transport.aborted
    lose(protocol)
    assert outcome(sent).value.reason == "timeout waiting for the upstream"


def test_a_closed_connection_fails_every_waiting_command():
    """The upstream closing fails each pending command with the reason, and `closed` fires."""
    protocol, _, _ = connected()
    first, second = protocol.send(b"MAIL FROM:<a@x>"), protocol.send(b"RCPT TO:<b@y>")
    lose(protocol)
    assert [outcome(d).value.reason for d in (first, second)] == [
        "upstream closed the connection"
    ] * 2
    assert protocol.closed.called
    assert outcome(protocol.send(b"NOOP")).check(Lost)  # and nothing is written after


def test_bytes_after_the_220_to_starttls_abort_the_connection():
    """STARTTLS response injection: a second reply in the read that carried the 220 aborts."""
    protocol, transport, _ = connected()
    answer = protocol.send(b"STARTTLS", starttls=True)
    protocol.dataReceived(b"220 2.0.0 Go ahead\r\n250 2.1.0 injected\r\n")
    assert transport.aborted and not answer.called
    lose(protocol)
    assert "injection" in outcome(answer).value.reason


def test_bytes_before_the_handshake_starts_abort_the_connection():
    """Data that arrives between the 220 to STARTTLS and the handshake is refused."""
    protocol, transport, _ = connected()
    answer = protocol.send(b"STARTTLS", starttls=True)
    protocol.dataReceived(b"220 2.0.0 Go ahead\r\n")
    assert outcome(answer).code == 220
    protocol.dataReceived(b"250 2.1.0 injected\r\n")
    assert transport.aborted and not transport.tls_started


def test_starttls_with_a_reply_already_buffered_is_not_sent():
    """A reply waiting in the buffer when STARTTLS would be sent aborts before it goes out."""
    protocol, transport, _ = connected()
    protocol.dataReceived(b"250 2.0.0 early\r\n")
    answer = protocol.send(b"STARTTLS", starttls=True)
    assert transport.aborted and b"STARTTLS" not in transport.value()
    assert "injection" in outcome(answer).value.reason


def test_starttls_forgets_what_came_before_and_starts_the_handshake():
    """After a clean 220 the handshake starts on a fresh parser (nothing pre-TLS survives)."""
    protocol, transport, _ = connected()
    answer = protocol.send(b"STARTTLS", starttls=True)
    protocol.dataReceived(b"220 2.0.0 Go ahead\r\n")
    assert outcome(answer).code == 220
    ready = protocol.start_tls(Policy())  # type: ignore[arg-type]
    assert transport.tls_started and not ready.called


def test_quit_closes_gracefully_once_answered():
    """`quit` says QUIT, and closes (loseConnection, not a reset) once it is answered."""
    protocol, transport, _ = connected()
    closed = protocol.quit()
    assert transport.value() == b"QUIT\r\n" and not transport.disconnecting
    protocol.dataReceived(b"221 2.0.0 Bye\r\n")
    assert transport.disconnecting and not transport.aborted
    assert not closed.called
    lose(protocol)
    assert outcome(closed) is None


def test_quit_closes_gracefully_after_a_refusal_of_quit_too():
    """Whatever QUIT is answered with (a 5xx too), the close is graceful."""
    protocol, transport, _ = connected()
    protocol.quit()
    protocol.dataReceived(b"502 5.5.1 no\r\n")
    assert transport.disconnecting and not transport.aborted


def test_no_command_goes_out_after_quit():
    """After QUIT the connection is ending: a later command fails at once and writes nothing."""
    protocol, transport, _ = connected()
    protocol.quit()
    transport.clear()
    assert protocol.ended
    assert isinstance(outcome(protocol.send(b"RSET")).value, Lost)
    assert transport.value() == b""


def test_each_step_gets_the_whole_timeout_and_an_answered_one_none():
    """The timer counts from each command; one answered before its deadline never fires."""
    protocol, transport, clock = connected(timeout=30)
    mail = protocol.send(b"MAIL FROM:<a@x>")
    clock.advance(20)
    protocol.dataReceived(b"250 2.1.0 OK\r\n")
    assert outcome(mail).code == 250
    clock.advance(20)  # past the first step's deadline, with no command waiting
    assert not transport.aborted
    rcpt = protocol.send(b"RCPT TO:<b@y>")
    clock.advance(29)
    assert not transport.aborted and not rcpt.called
    clock.advance(1)
    assert transport.aborted


def test_a_lost_connection_leaves_no_timer_behind():
    """The step timer is cancelled when the connection ends, answered or not."""
    protocol, _, clock = connected()
    protocol.send(b"NOOP")
    protocol.dataReceived(b"250 2.0.0 OK\r\n")
    protocol.send(b"NOOP")
    lose(protocol)
    assert clock.getDelayedCalls() == []


def test_quit_unanswered_is_aborted_within_its_timeout():
    """No reply to QUIT within its timeout: the connection is aborted, and quit fires then."""
    protocol, transport, clock = connected(timeout=300)
    closed = protocol.quit(timeout=3)
    clock.advance(2.9)
    assert not transport.aborted
    clock.advance(0.2)
    assert transport.aborted
    lose(protocol)
    assert outcome(closed) is None


def test_quit_answered_but_never_closed_is_aborted_within_its_timeout():
    """221 came, but the close did not complete (a peer that never ends TLS): aborted at the deadline."""
    protocol, transport, clock = connected()
    protocol.quit(timeout=3)
    protocol.dataReceived(b"221 2.0.0 Bye\r\n")
    assert transport.disconnecting and not transport.aborted
    clock.advance(3)
    assert transport.aborted


def test_quit_on_a_lost_connection_sends_nothing():
    """A connection that already went away gets no QUIT; quit fires at once."""
    protocol, transport, _ = connected()
    lose(protocol)
    assert outcome(protocol.quit()) is None
    assert transport.value() == b""


def test_quit_twice_sends_one_quit():
    """A second quit (pool and connector both closing) waits for the same close."""
    protocol, transport, _ = connected()
    first, second = protocol.quit(), protocol.quit()
    assert transport.value() == b"QUIT\r\n"
    lose(protocol)
    assert outcome(first) is None and outcome(second) is None


def test_a_reply_repeated_by_the_upstream_is_scrubbed_with_every_new_secret():
    """A reply found clean is remembered only until the next scrubber: new secrets search again."""
    protocol, _, _ = connected()
    protocol.scrubber = Scrubber(["alpha-secret"])
    for _ in range(2):  # the second time from what the connection remembers
        answered = protocol.send(b"RCPT TO:<b@y>")
        protocol.dataReceived(b"250 2.1.5 bravo-secret Ok\r\n")
        assert outcome(answered).text == "bravo-secret Ok"
    protocol.scrubber = Scrubber(["bravo-secret"], inherit=protocol.scrubber)
    answered = protocol.send(b"RCPT TO:<b@y>")
    protocol.dataReceived(b"250 2.1.5 bravo-secret Ok\r\n")
    assert outcome(answered).text == f"{REDACTED} Ok"
    answered = protocol.send(b"MAIL FROM:<a@x>")
    protocol.dataReceived(b"535 5.7.8 alpha-secret\r\n")
    assert outcome(answered).text == REDACTED
