"""The listener: bytes <-> SMTP lines for one app connection.

It frames commands (CRLF only, RFC 5321 line limits), answers them strictly in
order — while one command waits on the upstream, later pipelined commands wait
in a bounded buffer and the socket is paused — switches to the DATA reader
after 354, and enforces the idle timeout. All SMTP meaning lives in
`gateway.session`; this module only moves bytes.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway import replies
from gateway.commands import COMMAND_LINE_LIMIT, CommandError, parse_command
from gateway.data import DataReader
from gateway.replies import Reply
from gateway.session import Session

if TYPE_CHECKING:
    from gateway.service import Gateway

MAX_PIPELINE_BUFFER = 64 * 1024  # pause reading past this many unprocessed bytes
MAX_ERRORS = 20  # 5xx replies before the session is closed (421 4.7.0)


class SMTPServerProtocol(Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.session: Session | None = None
        self._buffer = b""
        self._discarding_long_line = False
        self._pending: defer.Deferred[Reply] | None = None
        self._reader: DataReader | None = None
        self._data_error_sent = False
        self._timer: Any = None
        self._paused = False
        self._closing = False
        self._errors = 0
        self._close_reason = "connection lost"

    # --- connection -----------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", "unknown"), getattr(peer, "port", 0)
        self.session = Session(self.gateway, secrets.token_hex(8), host, port)
        self.gateway.sessions.add(self)
        self._reply(self.session.greeting())
        self._touch()

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802
        self._cancel_timer()
        self.gateway.sessions.discard(self)
        if self.session is not None:
            self.session.close(self._close_reason)
        self.gateway.session_closed()

    def _close(self, reason: str, reply: Reply | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        if reply is not None:
            self._reply(reply)
        self.transport.loseConnection()

    def shutdown(self) -> None:
        """The gateway is stopping and the grace period is over."""
        self._close("gateway shutdown", replies.SHUTTING_DOWN)

    # --- idle timeout -------------------------------------------------------------------

    def _touch(self) -> None:
        self._cancel_timer()
        if not self._closing:
            timeout = self.gateway.config.listener.idle_timeout
            self._timer = self.gateway.reactor.callLater(timeout, self._idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _idle(self) -> None:
        self._timer = None
        self._close("idle timeout", replies.IDLE_TIMEOUT)

    # --- input --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        if self._pending is None:
            self._touch()
        if self._reader is not None:
            self._feed_data(data)
        else:
            self._buffer += data
            self._process()

    def _process(self) -> None:
        while self._pending is None and self._reader is None and not self._closing:
            newline = self._buffer.find(b"\n")
            if self._discarding_long_line:
                if newline < 0:
                    self._buffer = b""
                    break
                self._buffer = self._buffer[newline + 1 :]
                self._discarding_long_line = False
                self._reply(replies.LINE_TOO_LONG)
                continue
            if newline < 0:
                if len(self._buffer) > COMMAND_LINE_LIMIT:
                    self._buffer = b""
                    self._discarding_long_line = True
                break
            line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            if len(line) + 1 > COMMAND_LINE_LIMIT:
                self._reply(replies.LINE_TOO_LONG)
                continue
            if not line.endswith(b"\r"):
                self._reply(replies.NUL_IN_COMMAND.with_text("Command line must end with CRLF"))
                continue
            self._command(line[:-1])
        self._flow_control()

    def _flow_control(self) -> None:
        waiting = len(self._buffer) > MAX_PIPELINE_BUFFER and self._pending is not None
        if waiting and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not waiting and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _command(self, line: bytes) -> None:
        assert self.session is not None
        try:
            command = parse_command(line)
        except CommandError as exc:
            self._reply(exc.reply)
            return
        result = self.session.handle(command)
        if isinstance(result, defer.Deferred):
            self._pending = result
            self._cancel_timer()
            result.addCallback(self._answered, command.verb)
            result.addErrback(self._internal_error)
        else:
            self._answered(result, command.verb)

    def _answered(self, reply: Reply, verb: str) -> None:
        self._pending = None
        if self._closing or self.transport is None:
            return
        self._touch()
        self._reply(reply)
        if verb == "QUIT":
            self._close("client quit")
        elif reply.code == 421:
            self._close("closed by gateway")
        elif verb == "DATA" and reply.code == 354:
            assert self.session is not None
            self._reader = DataReader(self.session.config.listener.max_message_size)
            self._data_error_sent = False
            self.session.data_started(self.transport)
            buffered, self._buffer = self._buffer, b""
            if buffered:
                self._feed_data(buffered)
                return
        self._process()

    def _internal_error(self, failure: Failure) -> None:
        self.gateway.audit.event("gateway.error", session_id=self.session.session_id if self.session else None,
                                 error=failure.getErrorMessage()[:300], type=failure.type.__name__)
        self._pending = None
        self._close("internal error", Reply(421, "4.3.0", "Internal error, closing connection"))

    def _feed_data(self, data: bytes) -> None:
        reader, session = self._reader, self.session
        assert reader is not None and session is not None
        feed = reader.feed(data)
        for content in feed.content:
            session.data_content(content)
        if reader.error is not None and not self._data_error_sent:
            self._data_error_sent = True
            session.data_failed(reader.error)
        if feed.done:
            self._reader = None
            self._buffer = feed.leftover + self._buffer
            result = session.data_end(reader.error)
            if isinstance(result, defer.Deferred):
                self._pending = result
                self._cancel_timer()
                result.addCallback(self._answered, "DATA-END")
                result.addErrback(self._internal_error)
            else:
                self._answered(result, "DATA-END")

    # --- output -------------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if reply.code >= 500:
            self._errors += 1
        self.transport.write(reply.to_bytes())
        if self._errors >= MAX_ERRORS and reply.code != 221 and not self._closing:
            self._close("too many errors", replies.TOO_MANY_ERRORS)


class ListenerFactory(Factory):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def buildProtocol(self, addr: object) -> SMTPServerProtocol:  # noqa: N802
        protocol = SMTPServerProtocol(self.gateway)
        protocol.factory = self
        return protocol
