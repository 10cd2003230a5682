"""Unit tests of gateway/inbound/starttls.py: the session's side of TLS against an in-memory
host (no sockets, no handshake: `established` is what the listener calls after one)."""

from __future__ import annotations

from typing import Any

from gateway.inbound import starttls
from gateway.inbound.session import Session
from gateway.inbound.starttls import ClientTLS
from gateway.policy.passwords import make_hash
from gateway.smtp import replies
from tests.inbound.fakes import FakeHost, config

TLS_FILES = {"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}
DIGEST = "cd" * 32
HASH = make_hash("billing-password", "scrypt")


def session(listen_tls: str = "starttls", apps: Any = None, **listener: Any) -> Session:
    listen = {"plain": "127.0.0.1:2525", "starttls": "starttls://127.0.0.1:587"}[listen_tls]
    document: dict[str, Any] = {
        "listener": {"hostname": "mailgate.test", "listen": listen, **TLS_FILES, **listener}
    }
    if listen_tls == "plain":
        document["listener"] = {"hostname": "mailgate.test"}
    if apps:
        document["apps"] = apps
        document["listener"]["client_ca_file"] = "/ca.pem"
    host = FakeHost(config(document))
    s = Session(host, "s1", "127.0.0.1", 40000, listen_tls)
    s.greeting()
    return s


def ehlo_lines(s: Session) -> list[str]:
    return s.handle_line(b"EHLO app.test").text.split("\n")  # type: ignore[union-attr]


def test_starttls_offered_before_tls_and_auth_after():
    """Before TLS: STARTTLS and no AUTH; after `established`: AUTH and no STARTTLS."""
    apps = {"printer": {"client_cert_sha256": [DIGEST]}, "billing": {"password_hash": HASH}}
    s = session(apps=apps)
    assert "STARTTLS" in ehlo_lines(s) and not any(x.startswith("AUTH") for x in ehlo_lines(s))
    assert s.handle_line(b"STARTTLS") == replies.STARTTLS_READY and s.starting_tls
    starttls.established(s, ClientTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
    lines = ehlo_lines(s)
    assert "STARTTLS" not in lines and "AUTH PLAIN LOGIN" in lines


def test_established_forgets_the_greeting():
    """RFC 3207 4.2: after TLS the app must greet again."""
    s = session()
    s.handle_line(b"EHLO app.test")
    s.handle_line(b"STARTTLS")
    starttls.established(s, ClientTLS("TLSv1.3", "x"))
    assert s.handle_line(b"MAIL FROM:<a@example.com>") == replies.NEED_HELO


def test_starttls_refusals():
    """A parameter: 501 5.5.4; before EHLO: 503; twice: 503 5.5.1; on a plain entry: unknown."""
    s = session()
    assert s.handle_line(b"STARTTLS") == replies.NEED_HELO
    s.handle_line(b"EHLO app.test")
    assert s.handle_line(b"STARTTLS now") == replies.STARTTLS_NO_ARGUMENT
    assert s.handle_line(b"STARTTLS") == replies.STARTTLS_READY
    starttls.established(s, ClientTLS("TLSv1.3", "x"))
    assert s.handle_line(b"STARTTLS") == replies.STARTTLS_TWICE
    plain = session("plain")
    plain.handle_line(b"EHLO app.test")
    assert plain.handle_line(b"STARTTLS") == replies.SYNTAX_UNKNOWN


def test_require_tls_refuses_mail_before_tls():
    """require_tls: MAIL before STARTTLS gets 530 5.7.0 and a mail.refused naming the key;
    without it MAIL is taken."""
    s = session(require_tls=True)
    s.handle_line(b"EHLO app.test")
    assert s.handle_line(b"MAIL FROM:<a@example.com>") == replies.TLS_REQUIRED
    [refused] = s.host.events("mail.refused")  # type: ignore[attr-defined]
    assert refused["limit"] == "listener.require_tls" and refused["sender"] == "a@example.com"
    relaxed = session()
    relaxed.handle_line(b"EHLO app.test")
    assert relaxed.handle_line(b"MAIL FROM:<a@example.com>") == replies.SENDER_OK


def test_listed_certificate_identifies_the_app_and_unlisted_nobody():
    """A listed fingerprint authenticates its app; another verified one identifies nobody."""
    apps = {"printer": {"client_cert_sha256": [DIGEST], "senders": ["scanner@corp.example"]}}
    s = session(apps=apps)
    starttls.established(s, ClientTLS("TLSv1.3", "x", DIGEST))
    assert s.app == "printer"
    other = session(apps=apps)
    starttls.established(other, ClientTLS("TLSv1.3", "x", "ef" * 32))
    assert other.app is None
    assert starttls.audit_fields(other.tls)["client_cert_sha256"] == "ef" * 32


def test_audit_fields_are_null_on_a_plain_session():
    """client_tls_version and client_tls_cipher are None without TLS; no certificate field."""
    assert starttls.audit_fields(None) == {"client_tls_version": None, "client_tls_cipher": None}


def test_certificate_only_apps_offer_no_auth():
    """When every app is identified by certificate, EHLO after TLS offers no AUTH."""
    s = session(apps={"printer": {"client_cert_sha256": [DIGEST]}})
    s.handle_line(b"EHLO app.test")
    s.handle_line(b"STARTTLS")
    starttls.established(s, ClientTLS("TLSv1.3", "x"))
    assert not any(line.startswith("AUTH") for line in ehlo_lines(s))
