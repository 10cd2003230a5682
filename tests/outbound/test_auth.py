"""Upstream AUTH without sockets: a scripted protocol answers each line."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer

from gateway.config import toml as configuration
from gateway.config.model import UpstreamConfig
from gateway.config.secrets import Secret
from gateway.outbound.auth import (
    Attempt,
    _scrubbed,
    authenticate_bearer,
    authenticate_password,
    user_for,
)
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.grants import AccessToken
from gateway.outbound.protocol import Lost
from gateway.smtp import replies
from gateway.smtp.replies import Reply

PASSWORD = "pa55-word-!"


class Scripted:
    """Answers each line sent with the next reply of `answers`; records the lines.

    It has no ``quit``: after a refusal the connector, not AUTH, says QUIT and closes.
    """

    def __init__(self, *answers: Reply | Lost) -> None:
        self.answers = list(answers)
        self.lines: list[bytes] = []
        self.scrubber: Any = None  # the real protocol scrubs echoed secrets from replies

    def send(self, line: bytes, timeout: float | None = None) -> defer.Deferred[Reply]:
        self.lines.append(line)
        answer = self.answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Lost) else defer.succeed(answer)


class Tokens:
    """An `UpstreamTokens` that hands out numbered tokens; `invalidate` allows one refresh."""

    grant = "client_credentials"

    def __init__(self) -> None:
        self.issued = 0
        self.invalidated = 0

    def token(self, user: str) -> defer.Deferred[AccessToken]:
        self.issued += 1
        return defer.succeed(AccessToken(Secret(f"token-{self.issued}"), 3600.0, 3600.0))

    def invalidate(self, user: str, token: AccessToken) -> bool:
        self.invalidated += 1
        return True


def upstream(**settings: Any) -> UpstreamConfig:
    document = {
        "upstreams": {"up": {"host": "smtp.example.net", **settings}},
        "rules": [{"name": "r", "action": "relay", "upstream": "up"}],
    }
    return configuration.parse(document, "t.toml").upstreams["up"]


def run(coroutine: Any) -> Any:
    """The result of a coroutine whose Deferreds have all fired; raises what it raised."""
    results: list[Any] = []
    defer.Deferred.fromCoroutine(coroutine).addBoth(results.append)
    [result] = results
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


OK = Reply(235, "2.7.0", "Authentication successful")
CHALLENGE = Reply(334, "", "")
REFUSED = Reply(535, "5.7.8", "Authentication credentials invalid")


def password_auth(protocol: Scripted, offered: str, username: str = "relay@example.test") -> Any:
    config = upstream(username=username, password_env="UNUSED")
    return run(
        authenticate_password(
            protocol,  # type: ignore[arg-type]
            config,
            Secret(PASSWORD),
            {"AUTH": offered},
        )
    )


def test_plain_sends_user_and_password_in_one_line():
    """AUTH PLAIN carries NUL user NUL password, base64, as the initial response."""
    protocol = Scripted(OK)
    assert password_auth(protocol, "LOGIN PLAIN") == ("relay@example.test", "PLAIN")
    token = base64.b64encode(f"\0relay@example.test\0{PASSWORD}".encode())
    assert protocol.lines == [b"AUTH PLAIN " + token]


def test_login_is_used_when_plain_is_not_offered():
    """AUTH LOGIN answers the two challenges with the user and the password."""
    protocol = Scripted(CHALLENGE, CHALLENGE, OK)
    assert password_auth(protocol, "LOGIN") == ("relay@example.test", "LOGIN")
    assert protocol.lines[1:] == [
        base64.b64encode(b"relay@example.test"),
        base64.b64encode(PASSWORD.encode()),
    ]


def test_no_usable_mechanism_says_what_was_offered():
    """Neither PLAIN nor LOGIN after TLS: nothing is sent, the reason lists the offer."""
    protocol = Scripted()
    with pytest.raises(UpstreamFailure) as caught:
        password_auth(protocol, "CRAM-MD5 GSSAPI")
    assert caught.value.reply == replies.UPSTREAM_AUTH_FAILED
    assert "offered: CRAM-MD5 GSSAPI" in caught.value.reason
    assert protocol.lines == []


def test_a_connection_lost_after_the_cancel_is_an_upstream_failure():
    """The connection lost while cancelling an unanswerable challenge: 451 4.4.2, not a bug."""
    protocol = Scripted(CHALLENGE, Lost("upstream closed the connection"))
    with pytest.raises(UpstreamFailure) as caught:
        password_auth(protocol, "PLAIN")
    assert caught.value.reply == replies.UPSTREAM_LOST
    assert caught.value.reason == "up: upstream closed the connection during AUTH"
    assert protocol.lines[-1] == b"*"


def test_a_refusal_that_echoes_the_password_is_scrubbed():
    """A 535 whose text repeats the credential keeps its code; the credential becomes <redacted>."""
    protocol = Scripted(Reply(535, "5.7.8", f"bad password {PASSWORD}"))
    with pytest.raises(UpstreamFailure) as caught:
        password_auth(protocol, "PLAIN")
    failure = caught.value
    assert failure.upstream_reply == Reply(535, "5.7.8", "bad password <redacted>")
    assert PASSWORD not in failure.reason


def test_an_upstream_without_username_needs_no_auth():
    """No `username`: no AUTH at all."""
    protocol = Scripted()
    config = upstream()
    assert run(authenticate_password(protocol, config, None, {"AUTH": "PLAIN"})) == (None, None)  # type: ignore[arg-type]
    assert protocol.lines == []


def test_scrubbed_cuts_base64_forms_too():
    """Every form sent (plain or base64) is cut from a reply's text."""
    sent = [b"secret", base64.b64encode(b"secret")]
    reply = _scrubbed(Reply(535, "5.7.8", "got c2VjcmV0 and secret"), sent)
    assert reply.text == "got <redacted> and <redacted>"


def bearer_config(username: str = "relay@corp.example") -> UpstreamConfig:
    return upstream(
        auth="xoauth2",
        username=username,
        oauth_token_url="https://login.example/token",
        oauth_scope="mail",
        oauth_client_id="id",
        oauth_client_secret_env="UNUSED",
    )


def test_bearer_refused_token_is_refreshed_and_tried_once_more():
    """A 535 to XOAUTH2 invalidates the token; the refreshed one is accepted on the same connection."""
    protocol, tokens = Scripted(REFUSED, OK), Tokens()
    result = run(
        authenticate_bearer(protocol, bearer_config(), tokens, {"AUTH": "XOAUTH2"}, Attempt("a@x"))  # type: ignore[arg-type]
    )
    assert result == ("relay@corp.example", "XOAUTH2")
    assert tokens.issued == 2 and tokens.invalidated == 1
    assert [line.split(b" ")[:2] for line in protocol.lines] == [[b"AUTH", b"XOAUTH2"]] * 2


def test_bearer_for_the_null_sender_is_refused_without_a_token():
    """username = "$sender" and the sender <>: no token is asked for; a 5xx says why."""
    protocol, tokens = Scripted(), Tokens()
    with pytest.raises(UpstreamFailure) as caught:
        run(
            authenticate_bearer(
                protocol,  # type: ignore[arg-type]
                bearer_config("$sender"),
                tokens,  # type: ignore[arg-type]
                {"AUTH": "XOAUTH2"},
                Attempt(""),
            )
        )
    assert caught.value.reply == replies.UPSTREAM_NULL_SENDER_OAUTH
    assert tokens.issued == 0


def test_user_for_sender_placeholder_is_the_envelope_sender():
    """username = "$sender" authenticates as the envelope sender; otherwise as `username`."""
    assert user_for(bearer_config("$sender"), "app@corp.example") == "app@corp.example"
    assert user_for(bearer_config(), "app@corp.example") == "relay@corp.example"
