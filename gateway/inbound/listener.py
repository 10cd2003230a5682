"""The listener: bytes <-> SMTP lines for one app connection.

It frames commands (`gateway.smtp.lines`), answers them strictly in order, in one
loop that goes on while replies are ready at once — while one command waits on the
upstream, later pipelined commands wait in a bounded buffer and the socket is
paused — switches to the DATA reader after 354, and enforces the abuse limits
that are about bytes: connection counts, the error limit, TLS or HTTP on the
plaintext port, and a client that never reads its replies. All SMTP meaning lives
in `gateway.inbound.session`; this module only moves bytes. It asks its
surroundings only through a `ListenerHost`; the connection counts live in
`gateway.inbound.connections`, the time limits (idle, DATA, minimum data rate,
close grace) in `gateway.inbound.timeouts`, the TLS handshake (``smtps://`` at
connect, ``starttls://`` after STARTTLS) in `gateway.inbound.handshake`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.audit.events import Event
from gateway.inbound import handshake
from gateway.inbound.admission import client_key, proxy_trusted
from gateway.inbound.handshake import Handshake
from gateway.inbound.host import ListenerHost
from gateway.inbound.session import Session, new_session_id
from gateway.inbound.timeouts import Timeouts
from gateway.smtp import replies
from gateway.smtp.data import DataReader
from gateway.smtp.lines import CommandLines
from gateway.smtp.replies import (
    HTTP_ON_SMTP,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_CLIENT,
    Reply,
)

MAX_PIPELINE_BUFFER = 64 * 1024  # pause reading past this many unprocessed bytes
HTTP_VERBS = frozenset(
    {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "HOST:", "USER-AGENT:"}
)


@implementer(IPushProducer, IHandshakeListener)
class SMTPServerProtocol(Protocol):
    # A TCP or TLS transport (ITCPTransport, IPushProducer); Twisted declares only ITransport.
    transport: Any

    def __init__(self, host: ListenerHost, proxied: bool = False, tls: str = "plain") -> None:
        self.host = host
        self.proxied = proxied  # behind a PROXY header reader (gateway.inbound.proxy)
        self.tls = tls  # the entry's: "plain", "starttls" or "smtps"
        self._handshake: Handshake | None = None
        self.proxy_peer_trusted = False  # the TCP peer is in listener.proxy_trusted
        self.session: Session | None = None
        self._lines = CommandLines()  # input not handled yet
        self._processing = False  # inside `_process`: a nested call leaves the work to it
        self._command_verb = b""  # the command being answered (4xx to RCPT counts as an error)
        self._pending: defer.Deferred[Reply] | None = None
        self._reader: DataReader | None = None
        self._data_error_sent = False
        self.timeouts = Timeouts(self)  # idle, DATA, handshake, close grace
        self._pauses: set[str] = set()  # why reading from the app is paused (replies, buffer, ...)
        self.upstream_throttle = _UpstreamThrottle(self)
        self._closing = False
        self._errors = 0
        self._first_bytes = True
        self._close_reason = "connection lost"

    # --- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()  # behind a PROXY reader: the TCP peer, until a header
        host, port = getattr(peer, "host", "unknown"), getattr(peer, "port", 0)
        listener = self.host.config.listener
        connections = self.host.connections
        # Only a balancer's connection waits for its header to name the client; any other is
        # counted as itself, at once (and refused at its first bytes: see proxy_peer_untrusted).
        self.proxy_peer_trusted = self.proxied and proxy_trusted(listener, host)
        counted = None if self.proxy_peer_trusted else client_key(host)
        refusal = None
        if connections.full(listener):
            refusal, limit = TOO_MANY_CONNECTIONS, "listener.max_connections"
        elif counted is not None and connections.client_full(listener, counted):
            refusal, limit = TOO_MANY_FROM_CLIENT, "listener.max_connections_per_client"
        if refusal is not None:
            self._refuse_connection(host, port, limit, refusal)
            return
        connections.admit(self, counted)  # a handshake under way counts too
        self.session = Session(self.host, new_session_id(), host, port, self.tls)
        if self.proxied:
            self.session.expect_proxy_header()
        # Our own transport tells us when the app stops reading its replies.
        self.transport.registerProducer(self, True)
        if self.tls == "smtps":  # TLS from the first byte: the greeting waits for the handshake
            handshake.start(self, starttls_now=False)
            return
        self._reply(self.session.greeting())
        self.timeouts.idle()

    # --- TLS (gateway.inbound.handshake) ---------------------------------------------------

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        handshake.completed(self)

    def _proxy_header_read(self) -> bool:
        """The PROXY header named the client: tell the session, count it; False if refused."""
        assert self.session is not None
        peer = self.transport.getPeer()  # data arrives only after a valid header: the real client
        host, port = client_key(getattr(peer, "host", "unknown")), getattr(peer, "port", 0)
        self.session.proxy_header(host, port)
        if self.host.connections.client_full(self.host.config.listener, host):
            limit = "listener.max_connections_per_client"
            self._refuse_connection(host, port, limit, TOO_MANY_FROM_CLIENT)
            return False
        self.host.connections.identify(self, host)
        return True

    def _refuse_connection(self, host: str, port: int, limit: str, refusal: Reply) -> None:
        """Over a connection limit: ``connection.refused``, the reply, and close."""
        self.host.audit.event(
            Event.CONNECTION_REFUSED,
            client_ip=host,
            client_port=port,
            limit=limit,
            reply=str(refusal),
        )
        self._close("too many connections from the client", refusal)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.timeouts.stop()
        if self.session is None:
            return
        if self._handshake is not None and self._handshake.running:
            self._handshake.lost(reason)
            self._close_reason = "TLS handshake failed"
        try:
            self.session.close(self._close_reason)
        finally:
            self.host.connections.release(self)  # after session.closed: it may end the drain

    def _close(self, reason: str, reply: Reply | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        if reply is not None:
            self.transport.write(reply.to_bytes())
        self.transport.loseConnection()
        if self.tls == "smtps" or self._handshake is not None:  # TLS: not for ever
            self.timeouts.close_grace()

    def proxy_header_received(self) -> None:
        """A trusted balancer's header named the client: count it now (an idle one counts too)."""
        if not self._closing and self.session is not None and self.session.awaiting_proxy_header:
            self._proxy_header_read()

    def proxy_peer_untrusted(self) -> None:
        """A peer outside ``listener.proxy_trusted`` sent bytes where a balancer's header goes."""
        if self.session is not None:
            self.session.proxy_peer_untrusted()
        self._close("PROXY header from an untrusted peer", replies.PROXY_UNTRUSTED)

    def proxy_header_invalid(self) -> None:
        """The PROXY header reader refused the connection's first bytes."""
        if self.session is not None:
            self.session.proxy_header_invalid()
        self._close("invalid PROXY header", replies.PROXY_HEADER_INVALID)

    def shutdown(self) -> None:
        """The gateway is stopping and the grace period is over."""
        self._close("gateway shutdown", replies.SHUTTING_DOWN)

    # --- IPushProducer: the app is not reading its replies --------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self.pause("replies")

    def resumeProducing(self) -> None:  # noqa: N802
        self.resume("replies")
        self._process()

    def stopProducing(self) -> None:  # noqa: N802
        pass

    @property
    def _limits(self) -> Any:
        """The listener settings of this session's config (a reload does not change them mid-session)."""
        return (self.session.config if self.session is not None else self.host.config).listener

    # --- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        if self._first_bytes:
            self._first_bytes = False
            if data[:1] == b"\x16":  # a TLS ClientHello on the plaintext port
                self._close("TLS handshake on the plaintext port")
                return
        if self.proxied and self.session is not None and self.session.awaiting_proxy_header:
            if not self._proxy_header_read():
                return
        if self._reader is not None and not self._lines:
            self._feed_data(data)
        else:
            self._lines.feed(data)
            self._process()

    def _process(self) -> None:
        """Drain the buffer while replies are ready: one command after another, in a loop.

        A reply that is ready at once (even an already-fired Deferred) lets the loop go on; one
        that is not sets `_pending`, and its arrival calls `_process` again. Nothing here
        recurses per command, so a long pipeline costs no stack.
        """
        if self._processing:
            return
        self._processing = True
        try:
            self._drain()
        finally:
            self._processing = False
        self._flow_control()

    def _drain(self) -> None:
        lines = self._lines
        while self._pending is None and not self._closing and "replies" not in self._pauses:
            if self._reader is not None:  # pipelined body bytes after a 354
                if not lines:
                    break
                self._feed_data(lines.take_all())
                continue
            line = lines.next()
            if line is None:
                break
            if isinstance(line, Reply):
                self._reply(line)
            else:
                self._command(line)

    def _flow_control(self) -> None:
        waiting = len(self._lines) > MAX_PIPELINE_BUFFER and self._pending is not None
        if waiting:
            self.pause("buffer")
        else:
            self.resume("buffer")

    def pause(self, reason: str) -> None:
        """Stop reading from the app for `reason` (reading resumes when no reason is left)."""
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self._closing:
            self.transport.resumeProducing()

    def _command(self, line: bytes) -> None:
        assert self.session is not None
        self.timeouts.cancel()  # a complete command: the idle clock starts again after the reply
        self._command_verb = line[:4].upper()
        if (
            self.session.helo is None
            and line.split(b" ", 1)[0].upper().decode("ascii", "replace") in HTTP_VERBS
        ):
            self._close("HTTP request on the SMTP port", HTTP_ON_SMTP)
            return
        try:
            result = self.session.handle_line(line)
        except Exception:  # a bug must cost one session a 421, never a silent drop
            self._internal_error(Failure())
            return
        self._dispatch(result)

    def _dispatch(self, result: Reply | Failure | defer.Deferred[Reply]) -> None:
        """Answer now when the reply is ready (a Reply, or a Deferred that has fired), else later."""
        if isinstance(result, defer.Deferred):
            outcome: list[Reply | Failure] = []
            result.addBoth(outcome.append)
            if not outcome:  # the upstream has not answered yet: the loop waits for it
                self._pending = result
                result.addCallback(lambda _: self._answered_later(outcome[0]))
                result.addErrback(self._internal_error)
                return
            result = outcome[0]
        if isinstance(result, Failure):
            self._internal_error(result)
        else:
            self._answered(result)

    def _answered_later(self, outcome: Reply | Failure) -> None:
        self._pending = None
        self._dispatch(outcome)
        self._process()  # the loop itself checks whether it may go on

    def _answered(self, reply: Reply) -> None:
        """Send the reply and act on it (close, start the data, or wait for the next command)."""
        if self._closing or self.transport is None:
            return
        self._reply(reply)
        if self._closing:
            return
        if self.session is not None and self.session.starting_tls:
            handshake.start(self, starttls_now=True)
        elif reply.code in (221, 421):
            self._close("client quit" if reply.code == 221 else "closed by gateway")
        elif reply.code == 354:
            self._start_data()
        else:
            self.timeouts.idle()

    def _start_data(self) -> None:
        assert self.session is not None
        self._reader = DataReader(self.session.config.listener.max_message_size)
        self._data_error_sent = False
        self.session.data_started(self.upstream_throttle)
        self.timeouts.data_started()  # body bytes already buffered are fed by `_process`

    def _internal_error(self, failure: Failure) -> None:
        self.host.audit.event(
            Event.GATEWAY_ERROR,
            session_id=self.session.session_id if self.session else None,
            error=failure.getErrorMessage()[:300],
            type=failure.type.__name__,
        )
        self._pending = None
        self._close("internal error", replies.INTERNAL_ERROR)

    def _feed_data(self, data: bytes) -> None:
        reader, session = self._reader, self.session
        assert reader is not None and session is not None
        feed = reader.feed(data)
        for content in feed.content:
            session.data_content(content)
        if reader.error is not None and not self._data_error_sent:
            self._data_error_sent = True
            session.data_failed(reader.error)
        if not feed.done:
            self.timeouts.data_progress()
            return
        self._reader = None
        self.timeouts.cancel()
        self._lines.put_back(feed.leftover)
        self._dispatch(session.data_end(reader.error))
        self._process()  # from inside `_process` this returns at once and its loop goes on

    # --- output -------------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if replies.counts_as_error(reply, self._command_verb):
            self._errors += 1
        self.transport.write(reply.to_bytes())
        if self._errors >= self._limits.max_errors and reply.code != 221:
            self._close("too many errors", replies.TOO_MANY_ERRORS)


@implementer(IPushProducer)
class _UpstreamThrottle:
    """What the upstream's transport pauses while a body streams: reading from the app."""

    def __init__(self, listener: SMTPServerProtocol) -> None:
        self._listener = listener

    def pauseProducing(self) -> None:  # noqa: N802
        self._listener.pause("upstream")

    def resumeProducing(self) -> None:  # noqa: N802
        self._listener.resume("upstream")

    def stopProducing(self) -> None:  # noqa: N802
        self._listener.resume("upstream")  # the upstream went away: it must not keep the app paused


class ListenerFactory(Factory):
    def __init__(self, host: ListenerHost, proxied: bool = False, tls: str = "plain") -> None:
        self.host = host
        self.proxied = proxied
        self.tls = tls

    def buildProtocol(self, addr: object) -> SMTPServerProtocol:  # noqa: N802
        protocol = SMTPServerProtocol(self.host, self.proxied, self.tls)
        protocol.factory = self
        return protocol
