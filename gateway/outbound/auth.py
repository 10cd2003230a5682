"""Upstream AUTH after TLS: a password (PLAIN, LOGIN) or an OAuth bearer token (XOAUTH2, OAUTHBEARER).

Each function runs on a protocol that has completed TLS and EHLO, sends one AUTH exchange
and returns who the session is authenticated as; a refusal raises `UpstreamFailure` whose
`upstream_reply` is the server's reply as sent (code, its enhanced code or none) with every
credential sent cut out of its text (`_scrubbed`): a server may echo what it was sent. The
connector then says QUIT and closes. Nothing here logs, and no reason text carries a credential.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.model import UpstreamConfig
from gateway.config.providers import is_sender_placeholder
from gateway.config.secrets import Secret
from gateway.outbound.classify import auth_hint
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.grants import TokenError
from gateway.outbound.protocol import Lost, UpstreamProtocol
from gateway.outbound.scrub import Scrubber
from gateway.smtp import replies, sasl
from gateway.smtp.replies import Reply

if TYPE_CHECKING:
    from gateway.outbound.oauth import UpstreamTokens


@dataclass(frozen=True)
class Attempt:
    """One try at opening a session."""

    sender: str | None  # the envelope sender, for username = "$sender"
    token_refreshed: bool = False  # a refused token was already refreshed: no second retry
    probe: bool = False  # a readiness probe: no mail will follow


class Reconnect(Exception):
    """The upstream closed after refusing a token: retry once, with a fresh token, on a new connection."""


def user_for(config: UpstreamConfig, sender: str | None) -> str | None:
    """Who a session for `sender` authenticates as: `username`, or the sender for "$sender"."""
    return sender if is_sender_placeholder(config.username) else config.username


async def authenticate_password(
    protocol: UpstreamProtocol,
    config: UpstreamConfig,
    password: Secret | None,
    capabilities: dict[str, str],
) -> tuple[str | None, str | None]:
    """AUTH PLAIN (or LOGIN) after TLS as `config.username`: (user, mechanism), or (None, None)
    when the upstream needs no AUTH. One attempt: a refusal is final for this connection."""
    if not config.username:
        return None, None
    if password is None:
        raise UpstreamFailure(replies.UPSTREAM_AUTH_FAILED, f"{config.name}: no password available")
    offered = set(capabilities.get("AUTH", "").upper().split())
    user = config.username.encode("utf-8")
    secret = password.reveal().encode("utf-8")
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
            raise UpstreamFailure(
                replies.UPSTREAM_AUTH_FAILED,
                f"{config.name}: no supported AUTH mechanism offered after TLS (offered: {' '.join(sorted(offered)) or 'none'})",
            )
        if answer.code == 334:
            # A challenge we cannot answer: cancel the exchange (RFC 4954 4).
            answer = await protocol.send(b"*")
    except Lost as exc:
        raise UpstreamFailure(
            replies.UPSTREAM_LOST, f"{config.name}: {exc.reason} during AUTH"
        ) from None
    finally:
        del secret
    if answer.code != 235:
        raise UpstreamFailure(
            replies.UPSTREAM_AUTH_FAILED,
            f"{config.name}: AUTH {mechanism} as {config.username} refused: {answer.codes}"
            + _hint(answer),
            _scrubbed(answer, sent),
        )
    return config.username, mechanism


async def authenticate_bearer(
    protocol: UpstreamProtocol,
    config: UpstreamConfig,
    tokens: UpstreamTokens | None,
    capabilities: dict[str, str],
    attempt: Attempt,
    sent_secrets: Callable[[Scrubber], None] | None = None,
) -> tuple[str | None, str | None]:
    """XOAUTH2 (or OAUTHBEARER) after TLS; a refused token is refreshed and tried once more.

    `sent_secrets` is told of each token and payload sent, so that the connector can scrub
    them from what later connections hear before their own AUTH (an echo may come first).
    Raises `Reconnect` when the upstream closed after refusing a token that was then
    refreshed: the connector opens a new connection for the fresh token.
    """
    offered = set(capabilities.get("AUTH", "").upper().split())
    mechanism = sasl.choose_mechanism(offered)
    if mechanism is None:
        raise UpstreamFailure(
            replies.UPSTREAM_AUTH_FAILED,
            f"{config.name}: neither XOAUTH2 nor OAUTHBEARER offered after TLS "
            f"(offered: {' '.join(sorted(offered)) or 'none'})",
        )
    user = user_for(config, attempt.sender)
    if user is None and attempt.probe:
        # username = "$sender" in a readiness probe: connection, TLS, EHLO and the mechanism
        # are proven; there is no mailbox to authenticate as, and no mail will follow.
        return None, None
    if user is None:
        raise UpstreamFailure(
            replies.UPSTREAM_AUTH_FAILED,
            f'{config.name}: username = "$sender" needs the envelope sender to authenticate',
        )
    if not user:
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
            raise UpstreamFailure(
                replies.UPSTREAM_TOKEN_FAILED, f"{config.name}: {exc.reason}"
            ) from None
        secret = token.value.reveal()
        if mechanism == "XOAUTH2":
            initial = sasl.xoauth2_response(user, secret)
        else:
            initial = sasl.oauthbearer_response(user, secret, config.host, config.port)
        sent = [secret.encode("utf-8"), bytes(initial)]  # what a refusal's text must not repeat
        if sent_secrets is not None:
            sent_secrets(Scrubber(sent))
        protocol.scrubber = Scrubber(sent, inherit=protocol.scrubber)  # and a refused token
        del secret
        challenge = ""
        try:
            answer = await protocol.send(b"AUTH " + mechanism.encode("ascii") + b" " + initial)
            del initial
            if answer.code == 334:
                challenge = f" after {sasl.describe_challenge(answer.text)}"
                answer = await protocol.send(sasl.error_answer(mechanism))
        except Lost as exc:
            if refreshed and not attempt.token_refreshed:
                raise Reconnect() from None  # it closed after refusing the old token
            raise UpstreamFailure(
                replies.UPSTREAM_LOST, f"{config.name}: {exc.reason} during AUTH"
            ) from None
        if answer.code == 235:
            return user, mechanism
        may_retry = answer.code == 535 and not refreshed
        if may_retry and tokens.invalidate(user, token):
            refreshed = True
            continue
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
            f"{answer.codes}{retried}{_hint(answer)}",
            _scrubbed(answer, sent),
        )


def _hint(answer: Reply) -> str:
    """ "; hint: ..." for a known provider refusal (`classify.auth_hint`), else nothing."""
    hint = auth_hint(answer)
    return f"; hint: {hint}" if hint else ""


def _scrubbed(reply: Reply, sent: list[bytes]) -> Reply:
    """An AUTH refusal with every credential we sent cut out of its text (see `scrub`)."""
    return Scrubber(sent).reply(reply)
