"""The upstream wire protocol: bytes to replies, per-step timeouts, the STARTTLS injection guard.

`UpstreamProtocol` only turns bytes into replies (one waiter per command, in order), times each
step out, and refuses the STARTTLS response-injection trick: bytes that arrive with or right
after the ``220`` to STARTTLS, or that are buffered when STARTTLS is sent, abort the connection.
It knows no dialogue (that is `gateway.outbound.connector`) and never logs; a connection's end
fails every waiting command with `Lost` — or, when our own code raised in a transport callback
(Twisted then closes the connection with that exception as the reason), with that exception, so that it reaches the caller as the bug it is (``gateway.error``) and is
not mistaken for the upstream going away.

Two ways to end a connection. `quit` is every close we choose: QUIT, a short wait for the
221, then `close` — a graceful close (TLS ``close_notify``, then FIN), as RFC 5321 4.1.1.10
asks of a client and as servers that count abrupt disconnections (Postfix's "lost connection
after ...", Exim's "unexpected disconnection", fail2ban) expect. `abort` (a TCP reset) is
for real breakage: a timeout, a protocol error, the injection guard, an unverifiable peer.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed, ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.outbound.scrub import Scrubber
from gateway.outbound.tls import ClientConnectionCreator, TLSFacts, TLSFailure, UpstreamTLS
from gateway.smtp.replies import MalformedReply, Reply, ReplyParser
from gateway.timer import MovableTimer

MAX_UNCLAIMED_REPLIES = 8
MAX_CLEAN_REPLIES = 32  # replies the scrubber found clean, remembered per connection
QUIT_TIMEOUT = 5.0  # seconds from QUIT to a closed connection; then it is aborted


class Lost(Exception):
    """The connection ended (or was aborted); `reason` says how, for the audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@implementer(IHandshakeListener)
class UpstreamProtocol(Protocol):
    """Bytes to replies, with timeouts and the STARTTLS injection guard."""

    # A TCP or TLS transport (ITCPTransport, ISSLTransport); Twisted declares only ITransport.
    transport: Any

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._parser = ReplyParser()
        self._waiters: deque[defer.Deferred[Reply]] = deque()
        self._unclaimed: deque[Reply] = deque()
        self._step = MovableTimer(clock)  # times each step; one DelayedCall, moved
        self._tls_ready: defer.Deferred[TLSFacts] | None = None
        self._tls_policy: UpstreamTLS | None = None
        self._creator: ClientConnectionCreator | None = None
        self._switching_to_tls = False
        self._lost_reason: str | None = None
        self._bug: Exception | None = None  # our own code raised in a transport callback
        self._quit_guard: Any = None  # aborts a connection that QUIT did not close in time
        self._batch: list[bytes] | None = None  # command lines held for one write (`batched`)
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.is_closed = False
        self.tls_facts: TLSFacts | None = None
        self._scrubber: Scrubber | None = None
        # Replies the scrubber left as they were (an upstream repeats its "250 2.1.0 Ok"
        # for every message): not searched again. Never one that held a secret.
        self._clean: set[Reply] = set()

    @property
    def scrubber(self) -> Scrubber | None:
        """Set at connect and AUTH: scrubs every reply (the secrets sent on this connection)."""
        return self._scrubber

    @scrubber.setter
    def scrubber(self, scrubber: Scrubber | None) -> None:
        self._scrubber = scrubber
        self._clean.clear()  # new secrets: what was clean must be searched again

    def _scrub(self, reply: Reply) -> Reply:
        scrubber = self._scrubber
        if scrubber is None or reply in self._clean:
            return reply
        scrubbed = scrubber.reply(reply)
        if scrubbed is reply:
            if len(self._clean) >= MAX_CLEAN_REPLIES:
                self._clean.clear()
            self._clean.add(reply)
        return scrubbed

    # --- transport events -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            self.replies_received(data)
        except Exception as exc:  # noqa: BLE001 - our bug: the waiting command must hear it
            self._bug = exc
            self._abort(f"internal error ({type(exc).__name__})")

    def replies_received(self, data: bytes) -> None:
        """Bytes from the upstream: each complete reply to its waiting command, in order."""
        if self._switching_to_tls:
            self._abort("STARTTLS response injection: data arrived before the TLS handshake")
            return
        try:
            batch = self._parser.feed(data)
        except MalformedReply as exc:
            self._abort(f"protocol error: {exc}")
            return
        for index, reply in enumerate(batch):
            reply = self._scrub(reply)
            if self._waiters:
                waiter = self._waiters[0]
                if getattr(waiter, "starttls", False) and reply.code == 220:
                    if index + 1 < len(batch) or self._parser.pending:
                        # The waiter stays queued: connectionLost fails it with this reason.
                        self._abort("STARTTLS response injection: extra data after 220")
                        return
                    self._switching_to_tls = True
                self._waiters.popleft()
                self._stop_timer()
                waiter.callback(reply)
                if self.transport is None or self._lost_reason is not None:
                    return
                if self._waiters and not self._step.armed:
                    self._start_timer()
            else:
                self._unclaimed.append(reply)
                if len(self._unclaimed) > MAX_UNCLAIMED_REPLIES:
                    self._abort("protocol error: unsolicited replies")
                    return

    def handshakeCompleted(self) -> None:  # noqa: N802
        assert self._tls_policy is not None and self._tls_ready is not None
        ready, self._tls_ready = self._tls_ready, None
        self._stop_timer()
        try:
            self.tls_facts = self._tls_policy.check_peer(self.transport.getHandle())
        except Exception as exc:  # noqa: BLE001 - whatever failed, the waiting dialogue must hear it
            failure = (
                exc
                if isinstance(exc, TLSFailure)
                else TLSFailure(f"TLS peer check failed ({type(exc).__name__})")
            )
            self._lost_reason = failure.reason
            # Nothing goes over an unverified channel, not even QUIT; a close_notify does.
            self.transport.loseConnection()
            self._guard_close(QUIT_TIMEOUT)
            ready.errback(failure)
            return
        ready.callback(self.tls_facts)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._drop_timer()
        if self._quit_guard is not None and self._quit_guard.active():
            self._quit_guard.cancel()
        self._quit_guard = None
        ours = self._lost_reason  # our own reason for ending it (a timeout, a QUIT), if any
        if self._bug is None and _our_bug(reason):
            self._bug = reason.value  # the transport closed because our own callback raised
        if self._lost_reason is None:
            self._lost_reason = _describe_loss(reason)
        if self._tls_ready is not None:
            ready, self._tls_ready = self._tls_ready, None
            ready.errback(
                self._creator.explain(reason.value, ours)
                if self._creator
                else TLSFailure(f"TLS handshake failed: {self._lost_reason}", verification=False)
            )
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:  # our own bug goes up as itself, to be recorded as one
            waiter.errback(self._bug if self._bug is not None else Lost(self._lost_reason))
        self.is_closed = True
        self.closed.callback(None)

    # --- operations -------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        if self.transport is not None and not self.is_closed:
            self.transport.abortConnection()

    def abort(self, reason: str = "aborted by gateway") -> None:
        """End the connection at once (a TCP reset): for breakage, never a close we chose."""
        self._abort(reason)

    @property
    def ended(self) -> bool:
        """No command may go out any more: the connection is lost, or closing (QUIT was sent)."""
        return self._lost_reason is not None

    def quit(self, timeout: float = QUIT_TIMEOUT) -> defer.Deferred[None]:
        """Say QUIT, wait for its reply (whatever it is), then close gracefully.

        Fires when the connection is closed: by then, or after `timeout` seconds at most
        (the connection is then aborted), it is gone. Nothing may be sent after QUIT; on a
        connection already lost or closing this only waits for the close.
        """
        if not self.ended and self.transport is not None:
            answered = self.send(b"QUIT", timeout)
            self._lost_reason = "closed after QUIT"
            self._guard_close(timeout)
            answered.addCallbacks(lambda _: self._close(), lambda _: None)
        return self.when_closed()

    def close(self, reason: str = "closed by gateway") -> defer.Deferred[None]:
        """Close gracefully without QUIT (TLS close_notify, then FIN); fires when closed."""
        if self._lost_reason is None:
            self._lost_reason = reason
        self._close()
        self._guard_close(QUIT_TIMEOUT)
        return self.when_closed()

    def _close(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.loseConnection()

    def _guard_close(self, timeout: float) -> None:
        """Abort the connection if it is not closed `timeout` seconds from now."""
        if self._quit_guard is None and not self.is_closed:
            self._quit_guard = self.clock.callLater(timeout, self._close_overdue)

    def _close_overdue(self) -> None:
        self._quit_guard = None
        if self.transport is not None and not self.is_closed:
            self.transport.abortConnection()

    def when_closed(self) -> defer.Deferred[None]:
        """A Deferred that fires (with None, never an error) once the connection is closed."""
        done: defer.Deferred[None] = defer.Deferred()
        if self.is_closed:
            done.callback(None)
            return done

        def closed(result: None) -> None:
            if not done.called:
                done.callback(None)
            return result

        self.closed.addCallback(closed)
        return done

    def _start_timer(self, timeout: float | None = None) -> None:
        """Time the step that starts now: `_timed_out` in `timeout` (default: the command timeout)."""
        self._step.arm(timeout or self.timeout, self._timed_out)

    def _stop_timer(self) -> None:
        """The step is answered (the timer is kept, to be moved for the next one)."""
        self._step.disarm()

    def _drop_timer(self) -> None:
        self._step.stop()

    def _timed_out(self) -> None:
        self._abort("timeout waiting for the upstream")

    def read_reply(
        self, timeout: float | None = None, *, starttls: bool = False
    ) -> defer.Deferred[Reply]:
        if self._lost_reason is not None:
            return defer.fail(Lost(self._lost_reason))
        if self._unclaimed and not starttls:
            return defer.succeed(self._unclaimed.popleft())
        waiter: defer.Deferred[Reply] = defer.Deferred()
        waiter.starttls = starttls  # type: ignore[attr-defined]
        self._waiters.append(waiter)
        if not self._step.armed:
            self._start_timer(timeout)
        return waiter

    def send(
        self, line: bytes, timeout: float | None = None, *, starttls: bool = False
    ) -> defer.Deferred[Reply]:
        """Write one command line; the Deferred fires with its reply."""
        if self._lost_reason is not None:
            return defer.fail(Lost(self._lost_reason))
        if starttls and (self._unclaimed or self._parser.pending):
            self._abort("STARTTLS response injection: data buffered before STARTTLS")
            return defer.fail(Lost(self._lost_reason or ""))
        if self._batch is not None:
            self._batch.append(line + b"\r\n")
        else:
            self.transport.write(line + b"\r\n")
        return self.read_reply(timeout, starttls=starttls)

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Command lines sent inside the block go out at its end in one write (RFC 2920
        pipelining: one TCP send, one TLS record), each with its own reply as usual."""
        self._batch = []
        try:
            yield
        finally:
            lines, self._batch = self._batch, None
            if lines and self._lost_reason is None and self.transport is not None:
                self.transport.write(b"".join(lines))

    def write(self, data: bytes) -> None:
        if self._lost_reason is None:
            self.transport.write(data)

    def start_tls(self, policy: UpstreamTLS, *, implicit: bool = False) -> defer.Deferred[TLSFacts]:
        """Begin (or, for implicit TLS, await) the handshake; fires after `check_peer` passed."""
        self._tls_policy = policy
        self._tls_ready = defer.Deferred()
        ready = self._tls_ready
        self._start_timer()
        if not implicit:
            self._creator = policy.creator()
            self._parser = ReplyParser()
            self._unclaimed.clear()
            self.transport.startTLS(self._creator)
            self._switching_to_tls = False
        return ready

    def set_creator(self, creator: ClientConnectionCreator) -> None:
        self._creator = creator


def _our_bug(reason: Failure) -> bool:
    """Did the connection end because our own code raised in a transport callback?

    Twisted closes a connection whose protocol raised (in ``dataReceived``, a producer, ...)
    with that exception as the reason; the network's own ends are these types.
    """
    return isinstance(reason.value, Exception) and not isinstance(
        reason.value, ConnectionClosed | ConnectError | OSError | SSL.Error
    )


def _describe_loss(reason: Failure) -> str:
    if reason.check(ConnectionDone):
        return "upstream closed the connection"
    return f"connection lost ({type(reason.value).__name__})"


class ProtocolFactory(Factory):
    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: object) -> UpstreamProtocol:  # noqa: N802
        protocol = UpstreamProtocol(self.clock, self.timeout)
        protocol.factory = self
        return protocol
