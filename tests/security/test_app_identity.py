"""Issue 4 class 2: per-app identity on the listener (AUTH PLAIN/LOGIN, owned senders)."""

from __future__ import annotations

import base64
import smtplib

import pytest

from gateway.policy.passwords import make_hash
from gateway.testing.trace import without_trace
from tests.conftest import relay_all, upstream_table

APP_PASSWORD = "billing-app-password-123"
HASH = make_hash(APP_PASSWORD, "scrypt")
BODY = b"From: invoices@billing.example.com\r\nSubject: invoice\r\n\r\nbody\r\n"


@pytest.fixture
def gateway_with_apps(make_upstream, start_gateway, ca):
    def start(
        require_auth: bool = False,
        check_from_header: bool = False,
        rule_apps: list[str] | None = None,
    ):
        upstream = make_upstream()
        document = relay_all(upstream_table(upstream, ca.ca_file), require_auth=require_auth)
        document["apps"] = {
            "billing": {
                "password_hash": HASH,
                "senders": ["*@billing.example.com"],
                "check_from_header": check_from_header,
            }
        }
        if rule_apps is not None:
            document["rules"][0]["apps"] = rule_apps
        return start_gateway(document), upstream

    return start


def test_app_authenticates_with_plain_and_relays(gateway_with_apps):
    """An app with the right password may send as its own senders; the audit names the app."""
    gw, upstream = gateway_with_apps(require_auth=True)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.login("billing", APP_PASSWORD)  # smtplib prefers PLAIN here... or LOGIN
        client.sendmail("invoices@billing.example.com", ["ops@example.net"], BODY)
    upstream.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    assert result["app"] == "billing" and result["outcome"] == "relayed"
    assert gw.audit.named("session.authenticated")[0]["app"] == "billing"


def test_auth_login_exchange(gateway_with_apps):
    """AUTH LOGIN with its two 334 challenges authenticates too."""
    gw, _ = gateway_with_apps()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd(base64.b64encode(b"billing").decode())[0] == 334
        assert client.docmd(base64.b64encode(APP_PASSWORD.encode()).decode()) == (
            235,
            b"2.7.0 Authentication successful",
        )


@pytest.mark.parametrize(
    "user,password", [("billing", "wrong-password-123"), ("nobody", APP_PASSWORD)]
)
def test_bad_credentials_get_535_and_are_not_logged(user, password, gateway_with_apps):
    """Wrong password or unknown app: 535 5.7.8, and the attempted password is in no audit event."""
    gw, _ = gateway_with_apps()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login(user, password)
        assert caught.value.smtp_code == 535
    gw.audit.wait_for("session.auth_failed")
    assert password not in gw.audit.text
    assert base64.b64encode(password.encode()).decode() not in gw.audit.text


def test_sender_not_owned_by_app_is_553(gateway_with_apps):
    """An authenticated app sending as somebody else's address gets 553 5.7.1."""
    gw, upstream = gateway_with_apps()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.login("billing", APP_PASSWORD)
        assert client.mail("ceo@example.com") == (
            553,
            b"5.7.1 Sender address not owned by the authenticated app",
        )
    assert upstream.connections == 0


def test_require_auth_refuses_anonymous_mail_with_530(gateway_with_apps):
    """With listener.require_auth, MAIL before AUTH gets 530 5.7.0."""
    gw, upstream = gateway_with_apps(require_auth=True)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("invoices@billing.example.com") == (
            530,
            b"5.7.0 Authentication required",
        )
    assert upstream.connections == 0


def test_rule_restricted_to_an_app_does_not_match_anonymous_clients(gateway_with_apps):
    """A rule with apps = ["billing"] is not reachable without authenticating as billing."""
    gw, _ = gateway_with_apps(rule_apps=["billing"])
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("invoices@billing.example.com")
        assert client.rcpt("ops@example.net")[0] == 550


def test_from_header_must_belong_to_the_app(gateway_with_apps):
    """With check_from_header, a From: outside the app's senders is refused and never delivered."""
    gw, upstream = gateway_with_apps(check_from_header=True)
    forged = b"From: CEO <ceo@example.com>\r\nSubject: pay this\r\n\r\nurgent\r\n"
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.login("billing", APP_PASSWORD)
        client.mail("invoices@billing.example.com")
        client.rcpt("ops@example.net")
        assert client.data(forged) == (
            550,
            b"5.7.1 From: header not allowed for the authenticated app",
        )
        client.rset()
        client.sendmail("invoices@billing.example.com", ["ops@example.net"], BODY)
    [message] = upstream.wait_for(1)
    assert without_trace(message.content) == BODY


def test_auth_not_offered_without_apps(make_upstream, start_gateway, ca):
    """Without [apps], EHLO does not offer AUTH and AUTH gets 502 5.5.1."""
    gw = start_gateway(relay_all(upstream_table(make_upstream(), ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        assert client.docmd("AUTH", "PLAIN AGJpbGxpbmcAeA==")[0] == 502


def test_from_check_applies_to_a_message_that_is_all_header(gateway_with_apps):
    """A forged From: in a message without a blank line (no body) is still refused."""
    gw, upstream = gateway_with_apps(check_from_header=True)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.login("billing", APP_PASSWORD)
        client.mail("invoices@billing.example.com")
        client.rcpt("ops@example.net")
        assert client.data(b"From: CEO <ceo@example.com>\r\nSubject: pay this") == (
            550,
            b"5.7.1 From: header not allowed for the authenticated app",
        )
    assert upstream.messages == []
