"""Unit tests of gateway/inbound/auth.py: the SASL exchanges and one session's AppLogin."""

from __future__ import annotations

import base64

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.config.model import App
from gateway.config.secrets import Secret
from gateway.inbound.auth import AppLogin, Credentials, SaslExchange
from gateway.policy import passwords
from gateway.policy.auth_throttle import AuthThrottle
from gateway.smtp import replies
from gateway.testing.audit import CapturedAudit

STORED = passwords.make_hash("pw", "scrypt")
APPS = {"billing": App("billing", STORED, senders=("*@billing.example.com",))}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_plain_with_initial_response():
    """AUTH PLAIN <base64> answers with the credentials at once."""
    exchange, answer = SaslExchange.begin(f"PLAIN {b64(chr(0) + 'billing' + chr(0) + 'pw')}")
    assert exchange is None and answer == Credentials("billing", Secret("pw"))


def test_login_asks_for_username_then_password():
    """AUTH LOGIN: two 334 challenges, then the credentials."""
    exchange, answer = SaslExchange.begin("LOGIN")
    assert exchange is not None and answer.code == 334
    assert exchange.respond(b64("billing")).code == 334
    assert exchange.respond(b64("pw")) == Credentials("billing", Secret("pw"))


@pytest.mark.parametrize(
    ("argument", "reply"),
    [("CRAM-MD5", replies.AUTH_UNKNOWN_MECHANISM), ("PLAIN !!!", replies.AUTH_UNDECODABLE)],
)
def test_bad_starts(argument, reply):
    """An unknown mechanism or an undecodable response is refused."""
    assert SaslExchange.begin(argument)[1] == reply


class Verifier:
    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.asked: list[tuple[str, str]] = []

    def __call__(self, password_hash: str, password: Secret) -> defer.Deferred[bool]:
        self.asked.append((password_hash, password.reveal()))
        return defer.succeed(self.ok)


class AuthHost:
    """The part of a `SessionHost` an `AppLogin` uses, with a `Verifier` and a test clock."""

    def __init__(self, verify: Verifier) -> None:
        self.verify_password = verify
        self.auth_throttle = AuthThrottle()
        self.dummies = passwords.DummyHashes(a.password_hash for a in APPS.values())
        self.clock = Clock()

    def dummy_hash(self, name: str) -> str:
        return self.dummies.for_name(name)

    def monotonic(self) -> float:
        return self.clock.seconds()

    def pause(self, seconds: float) -> defer.Deferred[None]:
        return defer.succeed(None)


def login(ok: bool) -> tuple[AppLogin, Verifier, CapturedAudit]:
    captured, verify = CapturedAudit(), Verifier(ok)
    host = AuthHost(verify)
    return AppLogin(APPS, host, captured.log().bind(session_id="s1")), verify, captured  # type: ignore[arg-type]


def result(d: defer.Deferred) -> object:
    out: list[object] = []
    d.addCallback(out.append)
    return out[0]


def test_app_login_checks_the_stored_hash_and_names_the_app():
    """The right password: 235, the app is known, ``session.authenticated`` names it."""
    app_login, verify, captured = login(ok=True)
    reply = result(app_login.begin(f"PLAIN {b64(chr(0) + 'billing' + chr(0) + 'pw')}", "10.0.0.1"))
    assert reply == replies.AUTH_OK and app_login.app == "billing"
    assert verify.asked == [(STORED, "pw")]
    assert captured.named("session.authenticated")[0]["client_ip"] == "10.0.0.1"


def test_unknown_app_costs_a_hash_check_and_fails():
    """An unknown name is checked against a dummy hash (same cost) and fails as unknown."""
    app_login, verify, captured = login(ok=True)
    reply = result(app_login.begin(f"PLAIN {b64(chr(0) + 'nobody' + chr(0) + 'pw')}", "10.0.0.1"))
    assert reply == replies.AUTH_FAILED and app_login.app is None
    assert verify.asked[0][0] != STORED
    assert passwords.parameters(verify.asked[0][0]) == passwords.parameters(STORED)
    assert captured.named("session.auth_failed")[0]["reason"] == "unknown app"


def test_login_exchange_spans_lines():
    """AUTH LOGIN: the login is `exchanging` until the password line; cancel with ``*``."""
    app_login, _, captured = login(ok=False)
    assert app_login.begin("LOGIN", "10.0.0.1").code == 334 and app_login.exchanging
    assert app_login.respond(b64("billing").encode(), "10.0.0.1").code == 334
    guess = "hunter2-guess"
    assert result(app_login.respond(b64(guess).encode(), "10.0.0.1")) == replies.AUTH_FAILED
    assert not app_login.exchanging and guess not in captured.text
    app_login.begin("LOGIN", "10.0.0.1")
    assert app_login.respond(b"*", "10.0.0.1") == replies.AUTH_CANCELLED
    assert captured.named("session.auth_failed")[-1]["reason"] == replies.AUTH_CANCELLED.text


def test_owns_senders_only_once_authenticated():
    """Before AUTH any sender passes (rules decide); after, only the app's own senders."""
    app_login, _, _ = login(ok=True)
    assert app_login.owns("ceo@other.example")
    result(app_login.begin(f"PLAIN {b64(chr(0) + 'billing' + chr(0) + 'pw')}", "10.0.0.1"))
    assert app_login.owns("invoices@billing.example.com")
    assert not app_login.owns("ceo@other.example")
