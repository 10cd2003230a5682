"""Class 5b, echoed secrets: what a peer repeats of our credentials goes nowhere.

A token endpoint may quote the client secret in its ``error`` or, URL-encoded,
base64 or JSON-escaped, in its ``error_description``; an upstream may quote the
password, base64 of it or the AUTH PLAIN / XOAUTH2 payload in its ``535`` — split
over several ``535-`` lines — or in any later reply. None of it may reach the
audit, ``/readyz`` (even in its detailed form) or the app: every text a peer
sends is scrubbed, in every encoding we send the secret in, before anything
records or relays it.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from gateway.smtp import sasl
from gateway.testing.oauth import OAuthSubmissionServer, TokenServer
from tests.conftest import PASSWORD, USER, relay_all, upstream_table
from tests.integration.test_xoauth2 import oauth_table
from tests.security.scripted_upstream import Script

CLIENT_SECRET = "cl1ent/Secret+Zq8~never-echoed"
MAILBOX = "relay@corp.example"
HALF = len(CLIENT_SECRET) // 2


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def forms_of(secret: str) -> dict[str, str]:
    """The forms of `secret` whose presence anywhere is a leak."""
    data = secret.encode()
    forms = {
        "raw": secret,
        "url-form": quote_plus(secret),
        "url-lower": re.sub("%..", lambda m: m[0].lower(), quote(secret, safe="")),
        "json": json.dumps(secret)[1:-1],
        "json-slash": json.dumps(secret)[1:-1].replace("/", "\\/"),
    }
    for offset in range(3):
        encoded = b64(b"\0" * offset + data)
        core = encoded[(offset * 4 + 2) // 3 : (len(data) + offset) // 3 * 4]
        forms[f"base64@{offset}"] = core
        forms[f"base64url@{offset}"] = core.replace("+", "-").replace("/", "_")
    return forms


def assert_not_in(text: str, secret: str, where: str) -> None:
    # An echo split over lines must not survive either (in the audit's JSON a line break is \n).
    flat = "".join(text.replace("\\n", "\n").split())
    for name, form in forms_of(secret).items():
        assert form not in flat, f"{name} form of the secret found in {where}"
    for half in (secret[: len(secret) // 2], secret[len(secret) // 2 :]):
        assert half not in flat, f"half of the secret found in {where}"


def readyz_details(gw: Any) -> str:
    port = gw.gateway.status_port.getHost().port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz?verbose=1", timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()


# --- a token endpoint that echoes the client secret -------------------------------------------

TOKEN_ECHOES = {
    "error-raw": {"error": CLIENT_SECRET},
    "error-url-encoded": {"error": quote_plus(CLIENT_SECRET)},
    "description-raw": {"error": "invalid_client", "error_description": f"got {CLIENT_SECRET}"},
    "description-url-encoded": {
        "error": "invalid_client",
        "error_description": f"client_secret={quote_plus(CLIENT_SECRET)} is wrong",
    },
    "description-base64": {
        "error": "invalid_client",
        "error_description": f"credential {b64(CLIENT_SECRET)} is wrong",
    },
    "description-json-escaped": {
        "error": "invalid_client",
        "error_description": "body "  # escaped the way PHP's json_encode does, with \\/
        + json.dumps({"client_secret": CLIENT_SECRET}).replace("/", "\\/"),
    },
    "description-split-over-lines": {
        "error": "invalid_client",
        "error_description": f"got {CLIENT_SECRET[:HALF]}\n{CLIENT_SECRET[HALF:]} here",
    },
}


@pytest.fixture
def token_server(server_cert: Any) -> Iterator[TokenServer]:
    server = TokenServer(server_cert.server_context()).start()
    yield server
    server.stop()


@pytest.fixture
def oauth_upstream(server_cert: Any, token_server: TokenServer) -> Iterator[OAuthSubmissionServer]:
    server = OAuthSubmissionServer(server_cert.server_context(), token_server, {MAILBOX})
    server.start()
    yield server
    server.stop()


def oauth_document(port: int, tokens: TokenServer, ca_file: str) -> dict[str, Any]:
    table = oauth_table(SimpleNamespace(port=port), tokens, ca_file)  # type: ignore[arg-type]
    return {**relay_all(table), "metrics": {"listen": "127.0.0.1:0"}}


def rcpt_reply(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.mail("app@example.com")[0] == 250
        return client.rcpt("ops@example.net")


@pytest.mark.parametrize("echo", sorted(TOKEN_ECHOES))
def test_client_secret_echoed_by_the_token_endpoint_is_nowhere(
    echo, token_server, oauth_upstream, start_gateway, ca, monkeypatch
):
    """Prevents a token endpoint's echo of the client secret reaching the audit, /readyz or the app."""
    monkeypatch.setenv("MAILGATE_TEST_CLIENT_SECRET", CLIENT_SECRET)
    token_server.script.error = (401, TOKEN_ECHOES[echo])
    gw = start_gateway(oauth_document(oauth_upstream.port, token_server, ca.ca_file))
    code, text = rcpt_reply(gw.port)
    assert code == 451 and text.startswith(b"4.7.0")
    [request] = token_server.wait_for_requests(1)
    assert request.form["client_secret"] == CLIENT_SECRET  # the secret really was sent
    [failed] = gw.audit.wait_for("oauth.token_failed")
    assert "answered HTTP 401" in failed["error"]
    gw.audit.wait_for("message.result")
    details = readyz_details(gw)
    assert "upstream up: no OAuth token can be had" in details
    assert_not_in(gw.audit.text, CLIENT_SECRET, "the audit")
    assert_not_in(details, CLIENT_SECRET, "/readyz?verbose=1")
    assert_not_in(text.decode(), CLIENT_SECRET, "the app's reply")


# --- an upstream that echoes the password or the token ------------------------------------------


def split_reply(code: bytes, enhanced: bytes, text: str, parts: int) -> bytes:
    """`text` cut into `parts` pieces, one per line of a multi-line reply."""
    size = -(-len(text) // parts)
    pieces = [text[i : i + size].encode() for i in range(0, len(text), size)]
    return b"".join(
        code + (b" " if i == len(pieces) - 1 else b"-") + enhanced + b" " + piece + b"\r\n"
        for i, piece in enumerate(pieces)
    )


PLAIN_BLOB = b64(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())

UPSTREAM_ECHOES: dict[str, Callable[[], Script]] = {
    "535-base64-split-over-two-lines": lambda: Script(
        auth_reply=split_reply(b"535", b"5.7.8", b64(PASSWORD), 2)
    ),
    "535-plain-blob-split-over-three-lines": lambda: Script(
        auth_reply=split_reply(b"535", b"5.7.8", PLAIN_BLOB, 3)
    ),
    "535-echoes-the-auth-line": lambda: Script(
        auth_reply=b"535 5.7.8 Authentication credentials invalid\r\n", echo_auth=True
    ),
    "535-raw-password": lambda: Script(
        auth_reply=f"535 5.7.8 password {PASSWORD} is wrong\r\n".encode()
    ),
    "535-url-encoded-password": lambda: Script(
        auth_reply=f"535 5.7.8 pw={quote_plus(PASSWORD)}\r\n".encode()
    ),
    "login-535-base64-split": lambda: Script(
        capabilities_tls=("AUTH LOGIN",),
        auth_reply=split_reply(b"535", b"5.7.8", b64(PASSWORD), 2),
    ),
    "rcpt-550-after-auth-echoes-base64": lambda: Script(
        rcpt_reply=split_reply(b"550", b"5.7.1", "you are " + b64(PASSWORD), 2)
    ),
    "mail-451-after-auth-echoes-the-blob": lambda: Script(
        mail_reply=f"451 4.7.0 session {PLAIN_BLOB}\r\n".encode()
    ),
}


@pytest.mark.parametrize("echo", sorted(UPSTREAM_ECHOES))
def test_password_echoed_by_the_upstream_is_nowhere(echo, scripted, start_gateway, ca):
    """Prevents an upstream's echo of the password (any encoding, any reply, split or not) leaking."""
    upstream = scripted(UPSTREAM_ECHOES[echo]())
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = rcpt_reply(gw.port)
    assert code in (451, 550)
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.saw_auth  # the password really was sent
    [result] = gw.audit.wait_for("message.result")
    assert "<redacted>" in result["upstream_reply"]
    assert_not_in(gw.audit.text, PASSWORD, "the audit")
    assert_not_in(text.decode(), PASSWORD, "the app's reply")


def test_a_short_password_in_an_echoed_plain_blob_is_cut(scripted, start_gateway, ca, monkeypatch):
    """Prevents a password too short to find inside base64 leaking through the echoed PLAIN blob."""
    short = "pw1"
    monkeypatch.setenv("MAILGATE_TEST_PASSWORD", short)
    blob = b64(b"\0" + USER.encode() + b"\0" + short.encode())
    upstream = scripted(mail_reply=split_reply(b"451", b"4.7.0", blob, 2))  # after AUTH went well
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert rcpt_reply(gw.port)[0] == 451
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_reply"] == "<redacted>\n<redacted>"


@pytest.mark.parametrize(
    "script",
    [
        Script(greeting=split_reply(b"554", b"5.7.1", "go away " + b64(PASSWORD), 2)),
        Script(tls="implicit", greeting=f"421 4.3.2 {PLAIN_BLOB}\r\n".encode()),
        Script(starttls_reply=f"454 4.7.0 not for {PASSWORD}\r\n".encode()),
    ],
    ids=["greeting", "greeting-over-tls", "starttls-refusal"],
)
def test_password_echoed_before_auth_is_nowhere(script, scripted, start_gateway, ca):
    """Prevents an upstream repeating, before AUTH, a password sent on an earlier connection."""
    upstream = scripted(script)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = rcpt_reply(gw.port)
    assert code == 451
    gw.audit.wait_for("message.result")
    assert_not_in(gw.audit.text, PASSWORD, "the audit")
    assert_not_in(text.decode(), PASSWORD, "the app's reply")


def test_bearer_token_echoed_by_the_upstream_is_nowhere(
    scripted, token_server, start_gateway, ca, monkeypatch
):
    """Prevents an upstream that quotes the XOAUTH2 line from leaking the access token."""
    monkeypatch.setenv("MAILGATE_TEST_CLIENT_SECRET", CLIENT_SECRET)
    upstream = scripted(
        capabilities_tls=("AUTH XOAUTH2",),
        auth_reply=b"535 5.7.8 Username and Password not accepted\r\n",
        echo_auth=True,
    )
    gw = start_gateway(oauth_document(upstream.port, token_server, ca.ca_file))
    code, text = rcpt_reply(gw.port)
    assert code == 451
    [result] = gw.audit.wait_for("message.result")
    assert "<redacted>" in result["upstream_reply"]
    tokens = token_server.issued  # the refused token, and the fresh one tried once more
    assert tokens
    for token in tokens:
        for secret in (token, sasl.xoauth2_response(MAILBOX, token).decode()):
            assert_not_in(gw.audit.text, secret, "the audit")
            assert_not_in(readyz_details(gw), secret, "/readyz?verbose=1")
            assert_not_in(text.decode(), secret, "the app's reply")


def _send_one(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        code, text = client.rcpt("ops@example.net")
        if code == 250:
            return client.data(b"Subject: x\r\n\r\nbody\r\n")
        return code, text


@pytest.mark.parametrize("where", ["greeting", "starttls"])
def test_a_token_sent_earlier_and_echoed_before_the_next_auth_is_nowhere(
    where, scripted, token_server, start_gateway, ca, monkeypatch
):
    """A bearer token sent on one connection and echoed in the next one's greeting or STARTTLS
    refusal (before that connection's own AUTH) is cut from the audit, the reply and /readyz."""
    monkeypatch.setenv("MAILGATE_TEST_CLIENT_SECRET", CLIENT_SECRET)
    upstream = scripted(Script(capabilities_tls=("PIPELINING", "AUTH XOAUTH2")))
    gw = start_gateway(oauth_document(upstream.port, token_server, ca.ca_file))
    assert _send_one(gw.port)[0] == 250  # connection 1: the token goes out in AUTH XOAUTH2
    upstream.wait_closed(1)  # pool_idle_timeout = 0: the next message opens a new connection
    [token] = token_server.issued
    echoed = sasl.xoauth2_response(MAILBOX, token).decode("ascii")
    if where == "greeting":
        upstream.script.greeting = f"554 5.7.0 session {token} refused\r\n".encode()
    else:
        upstream.script.starttls_reply = f"454 4.7.0 replayed {echoed} and {token}\r\n".encode()
    code, text = _send_one(gw.port)
    assert code == 451
    gw.audit.wait_for("message.result", 2)
    for secret in (token, echoed):
        assert_not_in(gw.audit.text, secret, "the audit")
        assert_not_in(text.decode(), secret, "the app's reply")
        assert_not_in(readyz_details(gw), secret, "/readyz")
