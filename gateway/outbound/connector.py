"""The upstream connector: opens one verified, authenticated SMTP session with a provider.

`UpstreamConnector.open` connects and walks the dialogue in order:

    implicit:  connect -> TLS handshake -> check peer -> 220 -> EHLO -> AUTH
    starttls:  connect -> 220 -> EHLO -> STARTTLS -> 220 -> TLS handshake
               -> check peer -> EHLO again (earlier capabilities forgotten) -> AUTH

Any failure before AUTH completes sends no credentials and no mail; it fails
with `UpstreamFailure`, carrying the reply the app should get and the reason
for the audit. There is no path that sends AUTH or MAIL in cleartext.

A refusal the server sent (greeting, EHLO, STARTTLS not offered or refused, AUTH) ends
the connection with QUIT and a graceful close, in one place (`_connect`); a connection
that broke (timeout, protocol error, injection) or an unexpected error is aborted. The
upstream's own reply is kept as it was sent (`UpstreamFailure.upstream_reply`: code,
enhanced code or none, text less any credential); the app's reply is the gateway's.

The bytes and timeouts are `gateway.outbound.protocol`'s, AUTH is `gateway.outbound.auth`'s.
Nothing here logs, and no exception text carries a command line, so credentials
cannot leak through an error.
"""

from __future__ import annotations

from collections import deque
from contextlib import AbstractContextManager
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
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.python.failure import Failure

from gateway.config.model import UpstreamConfig
from gateway.config.secrets import Secret
from gateway.outbound.auth import (
    Attempt,
    Reconnect,
    authenticate_bearer,
    authenticate_password,
    user_for,
)
from gateway.outbound.failure import UpstreamFailure, lost
from gateway.outbound.protocol import QUIT_TIMEOUT, Lost, ProtocolFactory, UpstreamProtocol
from gateway.outbound.scrub import Scrubber
from gateway.outbound.tls import ClientConnectionCreator, TLSFacts, TLSFailure, UpstreamTLS
from gateway.smtp import replies
from gateway.smtp.replies import Reply

if TYPE_CHECKING:
    from gateway.outbound.oauth import UpstreamTokens


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
    # Handed out again by its pool without the RSET that clears the last transaction: the
    # next batch on it starts with RSET (pipelined, where the upstream offers PIPELINING).
    reset_due: bool = False

    def command(self, line: bytes, timeout: float | None = None) -> defer.Deferred[Reply]:
        return _guard(self.protocol.send(line, timeout), self.config)

    def batched(self) -> AbstractContextManager[None]:
        """Commands sent inside the block go out in one write (where PIPELINING is offered)."""
        return self.protocol.batched()

    def write(self, data: bytes) -> None:
        self.protocol.write(data)

    def end_data(self) -> defer.Deferred[Reply]:
        self.protocol.write(b".\r\n")
        return _guard(self.protocol.read_reply(self.config.data_timeout), self.config)

    @property
    def transport(self) -> Any:
        return self.protocol.transport

    def quit(self) -> defer.Deferred[None]:
        """QUIT, a short wait for its reply, a graceful close; fires once the connection is gone
        (at most `QUIT_TIMEOUT` seconds, or the command timeout if shorter)."""
        return self.protocol.quit(min(QUIT_TIMEOUT, self.config.command_timeout))

    def abort(self) -> None:
        """A TCP reset: for a broken session, or one stopped in the middle of DATA (where a
        graceful close could let the upstream take a partial message)."""
        self.protocol.abort()


def _guard(d: defer.Deferred[Reply], config: UpstreamConfig) -> defer.Deferred[Reply]:
    """Turn transport-level failures during a transaction into `UpstreamFailure`."""

    def failed(failure: Failure) -> Failure:
        if failure.check(Lost):
            return Failure(lost(config.name, failure.value.reason))
        return failure

    return d.addErrback(failed)


SENT_REMEMBERED = 8  # bearer exchanges (tokens, payloads) scrubbed from later connections


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
        # The bearer tokens and payloads sent on the latest connections: an upstream may echo
        # one in a later connection's greeting or EHLO, before that connection's own AUTH.
        self._sent: deque[Scrubber] = deque(maxlen=SENT_REMEMBERED)

    def user_for(self, sender: str | None) -> str | None:
        """Who a session for `sender` authenticates as: `username`, or the sender for "$sender"."""
        return user_for(self.config, sender)

    def open(
        self, sender: str | None = None, *, probe: bool = False
    ) -> defer.Deferred[UpstreamSession]:
        """A ready session; `sender` (the envelope sender) is needed for username = "$sender".

        `probe`: only to learn whether the upstream is reachable; no mail may follow.
        """
        return defer.Deferred.fromCoroutine(self._open(sender, probe))

    async def _open(self, sender: str | None = None, probe: bool = False) -> UpstreamSession:
        try:
            return await self._connect(Attempt(sender, probe=probe))
        except Reconnect:
            return await self._connect(Attempt(sender, token_refreshed=True, probe=probe))

    async def _connect(self, attempt: Attempt) -> UpstreamSession:
        config = self.config
        factory = ProtocolFactory(self.reactor, config.command_timeout)
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
        # Sent on an earlier connection: an echo may come before this one's AUTH.
        password = [self.password.reveal()] if self.password is not None else []
        if password or self._sent:
            protocol.scrubber = Scrubber(password, inherit=list(self._sent))
        try:
            return await self._dialogue(protocol, creator, attempt)
        except UpstreamFailure:
            # A refusal: the server is still there and hears QUIT; a broken connection is
            # already gone (or going), and quit only waits for that.
            protocol.quit(min(QUIT_TIMEOUT, config.command_timeout))
            raise
        except BaseException:  # an unexpected error too: never leave the connection open
            protocol.abort("session setup failed")
            raise

    async def _dialogue(
        self, protocol: UpstreamProtocol, creator: ClientConnectionCreator | None, attempt: Attempt
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
                    raise UpstreamFailure(
                        replies.UPSTREAM_NO_STARTTLS, f"{name}: STARTTLS not offered"
                    )
                answer = await protocol.send(b"STARTTLS", starttls=True)
                if answer.code != 220:
                    raise UpstreamFailure(
                        replies.UPSTREAM_STARTTLS_REFUSED, f"{name}: STARTTLS refused", answer
                    )
                facts = await protocol.start_tls(self.tls)
                # RFC 3207 4.2: forget everything learned before TLS.
                capabilities = parse_ehlo(
                    self._expect(await protocol.send(ehlo), 250, "EHLO after STARTTLS")
                )
        except TLSFailure as exc:
            raise _tls_failure(name, exc) from None
        except Lost as exc:
            reply = replies.UPSTREAM_TIMEOUT if "timeout" in exc.reason else replies.UPSTREAM_LOST
            if "injection" in exc.reason:
                reply = replies.UPSTREAM_TLS_FAILED.with_text(
                    "Upstream STARTTLS failed: " + exc.reason
                )
            raise UpstreamFailure(reply, f"{name}: {exc.reason}") from None
        try:
            return await self._authenticate(protocol, facts, capabilities, attempt)
        except UpstreamFailure as failure:
            failure.at_auth = True
            raise

    async def _authenticate(
        self,
        protocol: UpstreamProtocol,
        facts: TLSFacts,
        capabilities: dict[str, str],
        attempt: Attempt,
    ) -> UpstreamSession:
        """AUTH (password or XOAUTH2) on the verified TLS session: the session to hand out."""
        config = self.config
        if config.auth == "xoauth2":
            bearer_user, bearer = await authenticate_bearer(
                protocol, config, self.tokens, capabilities, attempt, self._sent.append
            )
            return UpstreamSession(
                config,
                protocol,
                facts,
                capabilities,
                bearer_user,
                bearer,
                oauth_grant=self.tokens.grant if self.tokens else None,
            )
        auth_user, mechanism = await authenticate_password(
            protocol, config, self.password, capabilities
        )
        return UpstreamSession(config, protocol, facts, capabilities, auth_user, mechanism)

    def _expect(self, reply: Reply, code: int, step: str) -> Reply:
        if reply.code != code:
            raise UpstreamFailure(
                replies.UPSTREAM_STEP_REFUSED.with_text(
                    f"Upstream refused {step}, try again later"
                ),
                f"{self.config.name}: {step} answered {reply.codes}",
                reply,
            )
        return reply


def _tls_failure(name: str, exc: TLSFailure) -> UpstreamFailure:
    """Our check of the server's certificate refused it, or the handshake itself failed."""
    if exc.verification:
        return UpstreamFailure(
            replies.UPSTREAM_TLS_FAILED.with_text(
                f"Upstream TLS verification failed: {exc.reason}"
            ),
            f"{name}: TLS verification failed: {exc.reason}",
        )
    # exc.reason: "TLS handshake failed: <what OpenSSL or the connection said>"
    return UpstreamFailure(
        replies.UPSTREAM_TLS_HANDSHAKE_FAILED.with_text(f"Upstream {exc.reason}"),
        f"{name}: {exc.reason}",
    )


def _endpoint(reactor: Any, config: UpstreamConfig) -> Any:
    """TCP to the upstream; an IP literal skips name resolution (and its thread-pool hop)."""
    if isIPAddress(config.host):
        return TCP4ClientEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)
    if isIPv6Address(config.host):
        return TCP6ClientEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)
    return HostnameEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text.splitlines()[0][:200] if text else type(exc).__name__
