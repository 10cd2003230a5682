"""The whole path over real loopback sockets: smtplib -> mailgate -> aiosmtpd, real TLS."""

from __future__ import annotations

import hashlib
import smtplib

import pytest

from gateway.testing.trace import without_trace
from tests.conftest import USER, relay_all, upstream_table

BODY = (
    b"From: app@example.com\r\n"
    b"To: ops@example.net\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b".leading dot line\r\n"
    b"..two dots\r\n"
    b"plain line\r\n"
)


def send_raw(
    port: int, body: bytes, rcpts: list[str] | None = None, sender: str = "app@example.com"
):
    """Send `body` (already CRLF, not dot-stuffed) and return the final reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.mail(sender)[0] == 250
        for rcpt in rcpts or ["ops@example.net"]:
            code, text = client.rcpt(rcpt)
            assert code == 250, (code, text)
        return client.data(body)


def first_rcpt(port: int, rcpt: str = "ops@example.net") -> tuple[int, bytes]:
    """EHLO, MAIL and one RCPT; the reply to the RCPT (where upstream trouble surfaces)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        return client.rcpt(rcpt)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_relays_byte_for_byte_over_verified_tls_with_auth(tls, make_upstream, start_gateway, ca):
    """A message reaches a STARTTLS+AUTH and an implicit-TLS+AUTH upstream intact."""
    upstream = make_upstream(tls)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = send_raw(gw.port, BODY)
    assert code == 250
    [message] = upstream.wait_for(1)
    assert without_trace(message.content) == BODY
    assert message.tls_version in ("TLSv1.2", "TLSv1.3")
    assert message.auth_user == USER
    assert message.sender == "app@example.com" and message.recipients == ["ops@example.net"]
    [result] = gw.audit.named("message.result")
    assert result["outcome"] == "relayed"
    assert result["tls_mode"] == tls
    assert result["auth_user"] == USER
    assert result["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert result["message_id"] == "<m1@example.com>"
    assert result["size"] == len(BODY)
    assert result["tls_version"] == message.tls_version and result["peer_cert_sha256"]
    assert result["recipients"] == [
        {"address": "ops@example.net", "result": "relayed", "reply": result["reply"], "rule": "all"}
    ]


def test_audit_tells_the_session_story(make_upstream, start_gateway, ca):
    """Every event of a session shares its session_id, in order opened -> result -> closed."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    send_raw(gw.port, BODY)
    gw.audit.wait_for("session.closed")
    session = [e for e in gw.audit.events if "session_id" in e]
    assert [e["event"] for e in session] == ["session.opened", "message.result", "session.closed"]
    assert len({e["session_id"] for e in session}) == 1
    assert all(e["timestamp"].endswith("Z") and "T" in e["timestamp"] for e in session)
    assert session[0]["client_ip"] == "127.0.0.1" and session[0]["client_port"] > 0
    assert session[2]["relayed"] == 1 and session[2]["duration_s"] >= 0


def test_starttls_not_offered_sends_no_auth_and_defers(make_upstream, start_gateway, ca):
    """An upstream without STARTTLS gets QUIT: no AUTH, no MAIL, and the app gets 4xx."""
    upstream = make_upstream("none")
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = first_rcpt(gw.port)
    assert code == 451 and text.startswith(b"4.7.10")
    assert upstream.auth_attempts == [] and upstream.messages == []
    [result] = gw.audit.wait_for("message.result")
    assert "STARTTLS not offered" in result["upstream_error"]


def test_starttls_refused_defers(make_upstream, start_gateway, ca):
    """A 454 to STARTTLS means no AUTH and no mail, and a 4xx to the app."""
    upstream = make_upstream("starttls")
    upstream.script.starttls = "454 4.7.0 TLS not available due to temporary reason"
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = first_rcpt(gw.port)
    assert code == 451 and b"STARTTLS" in text
    assert upstream.auth_attempts == []


@pytest.mark.parametrize("case", ["wrong-name", "expired", "untrusted", "not-yet-valid"])
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_bad_certificate_defers_before_auth(case, tls, make_upstream, start_gateway, ca, tmp_path):
    """Certificates that fail verification stop the session before any credential or mail."""
    import datetime

    from gateway.testing.pki import ThrowawayCA

    now = datetime.datetime.now(datetime.timezone.utc)
    if case == "wrong-name":
        cert = ca.issue("wrong", "other.example")
        expect = "does not match host name"
    elif case == "expired":
        cert = ca.issue(
            "expired",
            "localhost",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        expect = "expired"
    elif case == "not-yet-valid":
        cert = ca.issue(
            "future",
            "localhost",
            not_before=now + datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=30),
        )
        expect = "not yet valid"
    else:
        cert = ThrowawayCA(str(tmp_path)).issue("stranger", "localhost")
        expect = "issuer is not trusted"
    upstream = make_upstream(tls, cert=cert)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = first_rcpt(gw.port)
    assert code == 451 and text.startswith(b"4.7.5")
    assert expect.encode() in text
    assert upstream.auth_attempts == [] and upstream.messages == []
    [result] = gw.audit.wait_for("message.result")
    assert expect in result["upstream_error"]


@pytest.mark.parametrize(
    "stage,reply,expected",
    [
        ("mail", "451 4.3.0 sender check deferred", (451, b"4.3.0")),
        ("mail", "550 5.7.60 not allowed to send as this sender", (550, b"5.7.60")),
        ("rcpt", "450 4.2.1 mailbox busy", (450, b"4.2.1")),
        ("rcpt", "550 5.1.1 no such user", (550, b"5.1.1")),
    ],
)
def test_upstream_refusal_before_data_reaches_app_at_rcpt(
    stage, reply, expected, make_upstream, start_gateway, ca
):
    """Upstream 4xx/5xx at MAIL or RCPT reach the app at its RCPT, code and enhanced code kept."""
    upstream = make_upstream()
    if stage == "mail":
        upstream.script.mail = reply
    else:
        upstream.script.rcpt["ops@example.net"] = reply
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        code, text = client.rcpt("ops@example.net")
        assert (code, text[: len(expected[1])]) == expected
        assert client.docmd("DATA")[0] == 554  # no valid recipients: nothing sent
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == ("deferred" if expected[0] < 500 else "rejected")


@pytest.mark.parametrize(
    "reply,code,enhanced",
    [
        ("452 4.3.1 insufficient storage", 452, b"4.3.1"),
        ("554 5.6.0 content rejected", 554, b"5.6.0"),
        ("421 4.7.0 too many messages, closing", 451, b"4.7.0"),
    ],
)
def test_upstream_reply_after_data_is_the_apps(
    reply, code, enhanced, make_upstream, start_gateway, ca
):
    """The reply after DATA is the upstream's: 4xx stays 4xx, 5xx stays 5xx, 421 becomes 451."""
    upstream = make_upstream()
    upstream.script.data = reply
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        got = client.data(BODY)
    assert got[0] == code and got[1].startswith(enhanced)
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == ("deferred" if code < 500 else "rejected")
    assert result["upstream_code"] == int(reply[:3])


def test_partial_recipients_only_accepted_ones_relayed(make_upstream, start_gateway, ca):
    """A recipient the upstream refuses is refused to the app; the others are relayed."""
    upstream = make_upstream()
    upstream.script.rcpt["bad@example.net"] = "550 5.1.1 no such user"
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        refused = client.sendmail("app@example.com", ["ok@example.net", "bad@example.net"], BODY)
    assert refused == {"bad@example.net": (550, b"5.1.1 no such user")}
    [message] = upstream.wait_for(1)
    assert message.recipients == ["ok@example.net"]
    [result] = gw.audit.wait_for("message.result")
    assert {r["address"]: r["result"] for r in result["recipients"]} == {
        "ok@example.net": "relayed",
        "bad@example.net": "rejected",
    }


def test_unreachable_upstream_gives_451_4_4_1(start_gateway, ca):
    """Nothing listening upstream: the app gets 451 4.4.1 and the audit says why."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    table = {
        "host": "127.0.0.1",
        "port": dead_port,
        "tls": "starttls",
        "username": USER,
        "password_env": "MAILGATE_TEST_PASSWORD",
        "ca_file": ca.ca_file,
        "connect_timeout": 5,
    }
    gw = start_gateway(relay_all(table))
    code, text = first_rcpt(gw.port)
    assert (code, text[:5]) == (451, b"4.4.1")
    [result] = gw.audit.wait_for("message.result")
    assert "cannot connect" in result["upstream_error"]


def test_wrong_password_defers_and_tries_auth_once(make_upstream, start_gateway, ca, monkeypatch):
    """A 535 from the upstream is one attempt per connection and a 4xx to the app."""
    upstream = make_upstream(users={USER: "another password"})
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = first_rcpt(gw.port)
    assert code == 451 and text.startswith(b"4.7.0")
    assert upstream.auth_attempts == [(USER, False)]


def test_app_leaving_after_the_final_dot_gets_the_true_outcome_in_the_audit(
    make_upstream, start_gateway, ca
):
    """If the app disconnects while the upstream's reply to the body is pending, the upstream
    transaction is not torn down: the audit records what the upstream really did."""
    import socket
    import threading

    upstream = make_upstream()
    hold, entered = threading.Event(), threading.Event()
    record = upstream._record

    def slow_record(message):  # in the upstream's thread, before it answers 250
        entered.set()
        assert hold.wait(30)
        record(message)

    upstream._record = slow_record
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    reader = sock.makefile("rb")
    sock.sendall(
        b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"
    )
    seen = 0
    while seen < 5:  # greeting, EHLO, MAIL, RCPT, 354
        seen += reader.readline()[3:4] == b" "
    sock.sendall(BODY.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    assert entered.wait(30)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    gw.audit.wait_for("session.closed")
    hold.set()
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "relayed"
    assert len(upstream.wait_for(1)) == 1
