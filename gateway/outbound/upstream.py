"""The upstream client: one verified, authenticated SMTP session with a provider.

`open_session` connects and walks the dialogue in order:

    implicit:  connect -> TLS handshake -> check peer -> 220 -> EHLO -> AUTH
    starttls:  connect -> 220 -> EHLO -> STARTTLS -> 220 -> TLS handshake
               -> check peer -> EHLO again (earlier capabilities forgotten) -> AUTH

Any failure before AUTH completes sends no credentials and no mail; it fails
with `UpstreamFailure`, carrying the reply the app should get and the reason
for the audit. There is no path that sends AUTH or MAIL in cleartext.

The transport layer (`UpstreamProtocol`) only turns bytes into replies, enforces
per-step timeouts, and refuses the STARTTLS response-injection trick: bytes that
arrive with or right after the ``220`` to STARTTLS abort the connection.
Nothing here logs, and no exception text carries a command line, so credentials
cannot leak through an error.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.model import UpstreamConfig
from gateway.config.providers import is_sender_placeholder
from gateway.config.secrets import Secret
from gateway.outbound.grants import TokenError
from gateway.outbound.scrub import Scrubber
from gateway.outbound.tls import ClientConnectionCreator, TLSFacts, TLSFailure, UpstreamTLS
from gateway.smtp import replies, sasl
from gateway.smtp.replies import MalformedReply, Reply, ReplyParser

if TYPE_CHECKING:
    from gateway.outbound.oauth import UpstreamTokens

MAX_UNCLAIMED_REPLIES = 8


class UpstreamFailure(Exception):
    """The upstream session could not be used.

    `reply` is what the app gets (always 4xx unless the upstream itself said 5xx
    to the message); `reason` is for the audit; `upstream_reply` is the
    upstream's own reply when there was one.
    """

    def __init__(self, reply: Reply, reason: str, upstream_reply: Reply | None = None) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.upstream_reply = upstream_reply


class _Lost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Timeout(Exception):
    pass


class _Reconnect(Exception):
    """The upstream closed after refusing a token: retry once, with a fresh token, on a new connection."""


@dataclass(frozen=True)
class _Attempt:
    sender: str | None  # the envelope sender, for username = "$sender"
    token_refreshed: bool = False  # a refused token was already refreshed: no second retry
    probe: bool = False  # a readiness probe: no mail will follow


@implementer(IHandshakeListener)
class UpstreamProtocol(Protocol):
    """Bytes to replies, with timeouts and the STARTTLS injection guard."""

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._parser = ReplyParser()
        self._waiters: deque[defer.Deferred[Reply]] = deque()
        self._unclaimed: deque[Reply] = deque()
        self._timer: Any = None
        self._tls_ready: defer.Deferred[TLSFacts] | None = None
        self._tls_policy: UpstreamTLS | None = None
        self._creator: ClientConnectionCreator | None = None
        self._switching_to_tls = False
        self._lost_reason: str | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.tls_facts: TLSFacts | None = None
        self.scrubber: Scrubber | None = None  # set at connect and AUTH: scrubs every reply

    # --- transport events -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._switching_to_tls:
            self._abort("STARTTLS response injection: data arrived before the TLS handshake")
            return
        try:
            batch = self._parser.feed(data)
        except MalformedReply as exc:
            self._abort(f"protocol error: {exc}")
            return
        for index, reply in enumerate(batch):
            reply = self.scrubber.reply(reply) if self.scrubber else reply
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
                if self._waiters and self._timer is None:
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
            self.transport.abortConnection()
            ready.errback(failure)
            return
        ready.callback(self.tls_facts)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # noqa: N802
        self._stop_timer()
        if self._lost_reason is None:
            self._lost_reason = _describe_loss(reason)
        if self._tls_ready is not None:
            ready, self._tls_ready = self._tls_ready, None
            explained = self._creator.explain(reason.value) if self._creator else self._lost_reason
            ready.errback(TLSFailure(explained))
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.errback(_Lost(self._lost_reason))
        self.closed.callback(None)

    # --- operations -------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        if self.transport is not None:
            self.transport.abortConnection()

    def abort(self, reason: str = "aborted by gateway") -> None:
        self._abort(reason)

    def _start_timer(self, timeout: float | None = None) -> None:
        self._stop_timer()
        self._timer = self.clock.callLater(timeout or self.timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._abort("timeout waiting for the upstream")

    def read_reply(
        self, timeout: float | None = None, *, starttls: bool = False
    ) -> defer.Deferred[Reply]:
        if self._lost_reason is not None:
            return defer.fail(_Lost(self._lost_reason))
        if self._unclaimed and not starttls:
            return defer.succeed(self._unclaimed.popleft())
        waiter: defer.Deferred[Reply] = defer.Deferred()
        waiter.starttls = starttls  # type: ignore[attr-defined]
        self._waiters.append(waiter)
        if self._timer is None:
            self._start_timer(timeout)
        return waiter

    def send(
        self, line: bytes, timeout: float | None = None, *, starttls: bool = False
    ) -> defer.Deferred[Reply]:
        """Write one command line; the Deferred fires with its reply."""
        if self._lost_reason is not None:
            return defer.fail(_Lost(self._lost_reason))
        if starttls and (self._unclaimed or self._parser.pending):
            self._abort("STARTTLS response injection: data buffered before STARTTLS")
            return defer.fail(_Lost(self._lost_reason or ""))
        self.transport.write(line + b"\r\n")
        return self.read_reply(timeout, starttls=starttls)

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


def _describe_loss(reason: Failure) -> str:
    if reason.check(ConnectionDone):
        return "upstream closed the connection"
    return f"connection lost ({type(reason.value).__name__})"


class _ProtocolFactory(Factory):
    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: object) -> UpstreamProtocol:  # noqa: N802
        protocol = UpstreamProtocol(self.clock, self.timeout)
        protocol.factory = self
        return protocol


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO reply lines after the first, as keyword -> parameters."""
    capabilities = {}
    for line in reply.lines()[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            capabilities[keyword.upper()] = params
    return capabilities


@dataclass
class UpstreamSession:
    """A verified, authenticated upstream session, ready for MAIL."""

    config: UpstreamConfig
    protocol: UpstreamProtocol
    tls: TLSFacts
    capabilities: dict[str, str]
    auth_user: str | None
    auth_mechanism: str | None
    log: list[str] = field(default_factory=list)
    oauth_grant: str | None = None  # the OAuth grant the token came from (auth = "xoauth2")

    def command(self, line: bytes, timeout: float | None = None) -> defer.Deferred[Reply]:
        return _guard(self.protocol.send(line, timeout), self.config)

    def write(self, data: bytes) -> None:
        self.protocol.write(data)

    def end_data(self) -> defer.Deferred[Reply]:
        self.protocol.write(b".\r\n")
        return _guard(self.protocol.read_reply(self.config.data_timeout), self.config)

    @property
    def transport(self) -> Any:
        return self.protocol.transport

    def quit(self) -> None:
        """Say QUIT and close; errors are irrelevant at this point."""
        if self.protocol._lost_reason is None:
            self.protocol.send(b"QUIT", 10).addBoth(
                lambda _: self.protocol.abort("closed after QUIT")
            )

    def abort(self) -> None:
        self.protocol.abort()


def _guard(d: defer.Deferred[Reply], config: UpstreamConfig) -> defer.Deferred[Reply]:
    """Turn transport-level failures during a transaction into `UpstreamFailure`."""

    def failed(failure: Failure) -> Failure:
        if failure.check(_Lost):
            reason = failure.value.reason
            reply = replies.UPSTREAM_TIMEOUT if "timeout" in reason else replies.UPSTREAM_LOST
            return Failure(UpstreamFailure(reply, f"{config.name}: {reason}"))
        return failure

    return d.addErrback(failed)


class UpstreamConnector:
    """Opens `UpstreamSession`s to one upstream: its TLS policy and resolved password."""

    def __init__(
        self,
        reactor: Any,
        config: UpstreamConfig,
        password: Secret | None,
        helo_name: str,
        tokens: UpstreamTokens | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.password = password
        self.helo_name = helo_name
        self.tls = UpstreamTLS(config)
        self.tokens = tokens

    def user_for(self, sender: str | None) -> str | None:
        """Who a session for `sender` authenticates as: `username`, or the sender for "$sender"."""
        return sender if is_sender_placeholder(self.config.username) else self.config.username

    def open(
        self, sender: str | None = None, *, probe: bool = False
    ) -> defer.Deferred[UpstreamSession]:
        """A ready session; `sender` (the envelope sender) is needed for username = "$sender".

        `probe`: only to learn whether the upstream is reachable; no mail may follow.
        """
        return defer.Deferred.fromCoroutine(self._open(sender, probe))

    async def _open(self, sender: str | None = None, probe: bool = False) -> UpstreamSession:
        try:
            return await self._connect(_Attempt(sender, probe=probe))
        except _Reconnect:
            return await self._connect(_Attempt(sender, token_refreshed=True, probe=probe))

    async def _connect(self, attempt: _Attempt) -> UpstreamSession:
        config = self.config
        factory = _ProtocolFactory(self.reactor, config.command_timeout)
        endpoint: Any = _endpoint(self.reactor, config)
        creator = None
        if config.tls == "implicit":
            creator = self.tls.creator()
            endpoint = wrapClientTLS(creator, endpoint)
        try:
            protocol: UpstreamProtocol = await endpoint.connect(factory)
        except (ConnectError, DNSLookupError, TimeoutError, OSError) as exc:
            raise UpstreamFailure(
                replies.UPSTREAM_UNREACHABLE,
                f"{config.name}: cannot connect to {config.host}:{config.port} ({_short(exc)})",
            ) from None
        if self.password is not None:  # sent on an earlier connection: an echo may come first
            protocol.scrubber = Scrubber([self.password.reveal()])
        try:
            return await self._dialogue(protocol, creator, attempt)
        except BaseException:  # an unexpected error too: never leave the connection open
            protocol.abort("session setup failed")
            raise

    async def _dialogue(
        self, protocol: UpstreamProtocol, creator: ClientConnectionCreator | None, attempt: _Attempt
    ) -> UpstreamSession:
        config = self.config
        name = config.name
        ehlo = f"EHLO {self.helo_name}".encode("ascii")
        try:
            if creator is not None:
                protocol.set_creator(creator)
                facts = await protocol.start_tls(self.tls, implicit=True)
                greeting = await protocol.read_reply()
                self._expect(greeting, 220, "greeting")
                capabilities = parse_ehlo(self._expect(await protocol.send(ehlo), 250, "EHLO"))
            else:
                greeting = await protocol.read_reply()
                self._expect(greeting, 220, "greeting")
                capabilities = parse_ehlo(self._expect(await protocol.send(ehlo), 250, "EHLO"))
                if "STARTTLS" not in capabilities:
                    self._quit(protocol)
                    raise UpstreamFailure(
                        replies.UPSTREAM_NO_STARTTLS, f"{name}: STARTTLS not offered"
                    )
                answer = await protocol.send(b"STARTTLS", starttls=True)
                if answer.code != 220:
                    self._quit(protocol)
                    raise UpstreamFailure(
                        replies.UPSTREAM_STARTTLS_REFUSED, f"{name}: STARTTLS refused", answer
                    )
                facts = await protocol.start_tls(self.tls)
                # RFC 3207 4.2: forget everything learned before TLS.
                capabilities = parse_ehlo(
                    self._expect(await protocol.send(ehlo), 250, "EHLO after STARTTLS")
                )
        except TLSFailure as exc:
            raise UpstreamFailure(
                replies.UPSTREAM_TLS_FAILED.with_text(
                    f"Upstream TLS verification failed: {exc.reason}"
                ),
                f"{name}: {exc.reason}",
            ) from None
        except _Lost as exc:
            reply = replies.UPSTREAM_TIMEOUT if "timeout" in exc.reason else replies.UPSTREAM_LOST
            if "injection" in exc.reason:
                reply = replies.UPSTREAM_TLS_FAILED.with_text(
                    "Upstream STARTTLS failed: " + exc.reason
                )
            raise UpstreamFailure(reply, f"{name}: {exc.reason}") from None
        if config.auth == "xoauth2":
            bearer_user, bearer = await self._authenticate_bearer(protocol, capabilities, attempt)
            return UpstreamSession(
                config,
                protocol,
                facts,
                capabilities,
                bearer_user,
                bearer,
                oauth_grant=self.tokens.grant if self.tokens else None,
            )
        auth_user, mechanism = await self._authenticate(protocol, capabilities)
        return UpstreamSession(config, protocol, facts, capabilities, auth_user, mechanism)

    def _expect(self, reply: Reply, code: int, step: str) -> Reply:
        if reply.code != code:
            raise UpstreamFailure(
                Reply(451, "4.4.0", f"Upstream refused {step}, try again later"),
                f"{self.config.name}: {step} answered {reply.codes}",
                reply,
            )
        return reply

    @staticmethod
    def _quit(protocol: UpstreamProtocol) -> None:
        protocol.send(b"QUIT", 5).addBoth(lambda _: protocol.abort("closed after QUIT"))

    async def _authenticate(
        self, protocol: UpstreamProtocol, capabilities: dict[str, str]
    ) -> tuple[str | None, str | None]:
        config = self.config
        if not config.username:
            return None, None
        if self.password is None:
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED, f"{config.name}: no password available"
            )
        offered = set(capabilities.get("AUTH", "").upper().split())
        user = config.username.encode("utf-8")
        secret = self.password.reveal().encode("utf-8")
        sent = [secret, base64.b64encode(secret)]  # what a refusal's text must not repeat
        protocol.scrubber = Scrubber([*sent, base64.b64encode(b"\0" + user + b"\0" + secret)])
        try:
            if "PLAIN" in offered:
                mechanism = "PLAIN"
                token = base64.b64encode(b"\0" + user + b"\0" + secret)
                sent.append(token)
                answer = await protocol.send(b"AUTH PLAIN " + token)
            elif "LOGIN" in offered:
                mechanism = "LOGIN"
                answer = await protocol.send(b"AUTH LOGIN")
                if answer.code == 334:
                    answer = await protocol.send(base64.b64encode(user))
                if answer.code == 334:
                    answer = await protocol.send(base64.b64encode(secret))
            else:
                self._quit(protocol)
                raise UpstreamFailure(
                    replies.UPSTREAM_AUTH_FAILED,
                    f"{config.name}: no supported AUTH mechanism offered after TLS (offered: {' '.join(sorted(offered)) or 'none'})",
                )
        except _Lost as exc:
            raise UpstreamFailure(
                replies.UPSTREAM_LOST, f"{config.name}: {exc.reason} during AUTH"
            ) from None
        finally:
            del secret
        if answer.code == 334:
            # A challenge we cannot answer: cancel the exchange (RFC 4954 4).
            answer = await protocol.send(b"*")
        if answer.code != 235:
            self._quit(protocol)
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED,
                f"{config.name}: AUTH {mechanism} as {config.username} refused: {answer.codes}",
                _scrubbed(answer, sent),
            )
        return config.username, mechanism

    async def _authenticate_bearer(
        self, protocol: UpstreamProtocol, capabilities: dict[str, str], attempt: _Attempt
    ) -> tuple[str | None, str | None]:
        """XOAUTH2 (or OAUTHBEARER) after TLS; a refused token is refreshed and tried once more."""
        config, tokens = self.config, self.tokens
        offered = set(capabilities.get("AUTH", "").upper().split())
        mechanism = sasl.choose_mechanism(offered)
        if mechanism is None:
            self._quit(protocol)
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED,
                f"{config.name}: neither XOAUTH2 nor OAUTHBEARER offered after TLS "
                f"(offered: {' '.join(sorted(offered)) or 'none'})",
            )
        user = self.user_for(attempt.sender)
        if user is None and attempt.probe:
            # username = "$sender" in a readiness probe: connection, TLS, EHLO and the mechanism
            # are proven; there is no mailbox to authenticate as, and no mail will follow.
            return None, None
        if user is None:
            self._quit(protocol)
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED,
                f'{config.name}: username = "$sender" needs the envelope sender to authenticate',
            )
        if not user:
            self._quit(protocol)
            raise UpstreamFailure(
                replies.UPSTREAM_NULL_SENDER_OAUTH,
                f'{config.name}: username = "$sender" cannot authenticate the null sender <>',
            )
        if tokens is None:
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED, f"{config.name}: no token source configured"
            )
        refreshed = attempt.token_refreshed
        while True:
            try:
                token = await tokens.token(user)
            except TokenError as exc:
                self._quit(protocol)
                raise UpstreamFailure(
                    replies.UPSTREAM_TOKEN_FAILED, f"{config.name}: {exc.reason}"
                ) from None
            secret = token.value.reveal()
            if mechanism == "XOAUTH2":
                initial = sasl.xoauth2_response(user, secret)
            else:
                initial = sasl.oauthbearer_response(user, secret, config.host, config.port)
            sent = [secret.encode("utf-8"), bytes(initial)]  # what a refusal's text must not repeat
            protocol.scrubber = Scrubber(sent, inherit=protocol.scrubber)  # and a refused token
            del secret
            challenge = ""
            try:
                answer = await protocol.send(b"AUTH " + mechanism.encode("ascii") + b" " + initial)
                del initial
                if answer.code == 334:
                    challenge = f" after {sasl.describe_challenge(answer.text)}"
                    answer = await protocol.send(sasl.error_answer(mechanism))
            except _Lost as exc:
                if refreshed and not attempt.token_refreshed:
                    raise _Reconnect() from None  # it closed after refusing the old token
                raise UpstreamFailure(
                    replies.UPSTREAM_LOST, f"{config.name}: {exc.reason} during AUTH"
                ) from None
            if answer.code == 235:
                return user, mechanism
            may_retry = answer.code == 535 and not refreshed
            if may_retry and tokens.invalidate(user, token):
                refreshed = True
                continue
            self._quit(protocol)
            retried = (
                " (with a refreshed token)"
                if refreshed
                else " (not retried: a refused token forced a refresh less than 30 s ago)"
                if may_retry
                else ""
            )
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED,
                f"{config.name}: AUTH {mechanism} as {user} refused{challenge}: "
                f"{answer.codes}{retried}",
                _scrubbed(answer, sent),
            )


def _endpoint(reactor: Any, config: UpstreamConfig) -> Any:
    """TCP to the upstream; an IP literal skips name resolution (and its thread-pool hop)."""
    if isIPAddress(config.host):
        return TCP4ClientEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)
    if isIPv6Address(config.host):
        return TCP6ClientEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)
    return HostnameEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)


def _scrubbed(reply: Reply, sent: list[bytes]) -> Reply:
    """An AUTH refusal with every credential we sent cut out of its text (see `scrub`)."""
    return Scrubber(sent).reply(reply)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text.splitlines()[0][:200] if text else type(exc).__name__
