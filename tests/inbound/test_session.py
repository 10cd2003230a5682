"""Unit tests of gateway/inbound/session.py: the dialogue against an in-memory host (no sockets)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.inbound.session import Session
from gateway.policy.passwords import make_hash
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.testing.trace import without_trace
from tests.inbound.fakes import MESSAGE_OK, RECIPIENT_OK, FakeHost, config

BODY = b"From: invoices@billing.example.com\r\nSubject: hi\r\n\r\nbody\r\n"
APP_PASSWORD = "billing-app-password-123"


@pytest.fixture(scope="module")
def app_hash() -> str:
    return make_hash(APP_PASSWORD, "scrypt")


def answer(result: Reply | defer.Deferred[Reply]) -> Reply:
    """The reply, now: a Deferred from the fake host has already fired."""
    if not isinstance(result, defer.Deferred):
        return result
    out: list[Any] = []
    result.addBoth(out.append)
    assert out, "the reply is still pending"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def start(host: FakeHost, client: str = "127.0.0.1") -> Session:
    session = Session(host, "s1", client, 40000)
    assert session.greeting().code == 220
    return session


def say(session: Session, *lines: str) -> list[Reply]:
    return [answer(session.handle_line(line.encode())) for line in lines]


def send_body(session: Session, body: bytes = BODY) -> Reply | defer.Deferred[Reply]:
    session.data_started(object())
    session.data_content(body)
    return session.data_end(None)


def test_greeting_and_ehlo_name_the_host_and_extensions():
    """The banner and EHLO use listener.hostname; EHLO lists SIZE, and AUTH only with [apps]."""
    host = FakeHost(config())
    session = Session(host, "s1", "127.0.0.1", 40000)
    assert session.greeting() == Reply(220, "", "mailgate.test ESMTP mailgate")
    [ehlo] = say(session, "EHLO app.example")
    assert ehlo.code == 250 and "PIPELINING" in ehlo.text and "SIZE 26214400" in ehlo.text
    assert "AUTH" not in ehlo.text
    [opened] = host.events("session.opened")
    assert opened["allowed"] is True and opened["client_ip"] == "127.0.0.1"
    assert host.metrics.sessions == [True]


def test_message_relayed_ends_in_one_result_with_the_upstream_latency():
    """MAIL, RCPT, DATA, body, dot: the delivery gets it all; one message.result says relayed."""
    host = FakeHost(config())
    session = start(host)
    [_, mail, rcpt] = say(
        session, "EHLO a", "MAIL FROM:<app@example.com>", "RCPT TO:<ops@example.net>"
    )
    assert (mail, rcpt) == (replies.SENDER_OK, RECIPIENT_OK)
    [delivery] = host.deliveries
    assert (delivery.mode, delivery.route, delivery.recipients) == (
        "relay",
        ("up",),
        [("ops@example.net", "all")],
    )
    assert say(session, "DATA")[0].code == 354
    delivery.finish_reply = pending = defer.Deferred()
    result = send_body(session)
    host.reactor.advance(3)
    pending.callback(MESSAGE_OK)
    assert answer(result) == MESSAGE_OK
    assert without_trace(delivery.body) == BODY and delivery.was_settled and delivery.aborted == []
    assert delivery.finished is not None and delivery.finished[1].session_id == "s1"
    [record] = host.events("message.result")
    assert record["outcome"] == "relayed" and record["upstream"] == "up"
    assert record["recipients"] == [
        {"address": "ops@example.net", "result": "relayed", "reply": str(MESSAGE_OK), "rule": "all"}
    ]
    assert record["size"] == len(BODY) and record["rules"] == ["all"]
    [(fields, waited)] = host.metrics.results
    assert fields["outcome"] == "relayed" and waited == 3
    session.close("client quit")
    [closed] = host.events("session.closed")
    assert (closed["messages"], closed["relayed"], closed["duration_s"]) == (1, 1, 3)


def test_client_not_allowed_gets_only_quit():
    """A client outside listener.allowed_clients is greeted 554, and every command but QUIT is 503."""
    host = FakeHost(config())
    session = Session(host, "s1", "192.0.2.7", 40000)
    assert session.greeting() == replies.GREETING_DENIED
    assert say(session, "EHLO a", "QUIT") == [replies.DENIED_COMMAND, replies.CLOSING]
    [denied] = host.events("session.denied")
    assert denied["limit"] == "listener.allowed_clients"
    assert host.metrics.sessions == [False]


def test_queued_message_writes_message_queued_not_a_result():
    """Queue mode: once durable, ``message.queued`` names the spool entry; no message.result yet."""
    queued = [{"name": "q", "action": "relay", "upstream": "up", "delivery": "queue"}]
    host = FakeHost(config({"rules": queued}))
    session = start(host)
    say(session, "EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "DATA")
    assert answer(send_body(session)) == MESSAGE_OK
    [record] = host.events("message.queued")
    assert record["queue_id"] == "q1" and record["upstreams"] == ["up"]
    assert record["recipients"][0]["result"] == "queued"
    assert host.events("message.result") == []
    assert host.metrics.results == [({"outcome": "queued", "rules": ["q"], "upstream": "up"}, None)]


def apps(app_hash: str, **app: Any) -> dict[str, Any]:
    billing = {"password_hash": app_hash, "senders": ["*@billing.example.com"], **app}
    return {"apps": {"billing": billing}}


def plain(username: str, password: str) -> str:
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode()


def test_app_authenticates_and_may_send_only_as_its_senders(app_hash):
    """AUTH PLAIN checks the password through the host; the app's senders bound MAIL FROM."""
    host = FakeHost(config(apps(app_hash)))
    session = start(host)
    [ehlo, auth] = say(session, "EHLO a", f"AUTH PLAIN {plain('billing', APP_PASSWORD)}")
    assert "AUTH PLAIN LOGIN" in ehlo.text and auth == replies.AUTH_OK
    assert host.events("session.authenticated")[0]["app"] == "billing"
    assert say(session, "MAIL FROM:<x@other.example>") == [replies.SENDER_NOT_OWNED]
    assert host.events("mail.refused")[0]["limit"] == "apps.billing.senders"
    assert say(session, "MAIL FROM:<invoices@billing.example.com>") == [replies.SENDER_OK]


def test_mail_refused_for_require_auth_is_recorded(app_hash):
    """require_auth: MAIL before AUTH gets 530 5.7.0 and a mail.refused naming the key."""
    host = FakeHost(config(apps(app_hash), require_auth=True))
    session = start(host)
    assert say(session, "EHLO a", "MAIL FROM:<invoices@billing.example.com>")[1] == (
        replies.AUTH_REQUIRED
    )
    [refused] = host.events("mail.refused")
    assert refused["limit"] == "listener.require_auth"
    assert refused["sender"] == "invoices@billing.example.com"
    assert refused["reply"] == str(replies.AUTH_REQUIRED)
    assert say(session, "MAIL FROM:<bad")[0] == replies.AUTH_REQUIRED
    assert host.events("mail.refused")[1]["sender"] is None  # a line that names no sender


def test_wrong_app_password_fails_without_naming_it(app_hash):
    """A wrong password is 535 5.7.8; the audit says why, and never the password."""
    host = FakeHost(config(apps(app_hash)))
    session = start(host)
    [_, auth] = say(session, "EHLO a", f"AUTH PLAIN {plain('billing', 'guess')}")
    assert auth == replies.AUTH_FAILED
    [failed] = host.events("session.auth_failed")
    assert failed["reason"] == "wrong password" and "guess" not in host.captured.text


def test_from_header_not_owned_refuses_the_message_before_any_body_byte(app_hash):
    """check_from_header: a From: the app does not own gets 550 5.7.1 and the delivery is aborted."""
    host = FakeHost(config(apps(app_hash, check_from_header=True)))
    session = start(host)
    say(session, "EHLO a", f"AUTH PLAIN {plain('billing', APP_PASSWORD)}")
    say(session, "MAIL FROM:<invoices@billing.example.com>", "RCPT TO:<b@example.net>", "DATA")
    reply = send_body(session, b"From: ceo@other.example\r\nSubject: x\r\n\r\nbody\r\n")
    assert answer(reply) == replies.FROM_NOT_OWNED
    [delivery] = host.deliveries
    assert delivery.body == b"" and delivery.finished is None
    assert delivery.aborted[0] == "From: header not owned by the app"
    [record] = host.events("message.result")
    assert record["limit"] == "apps.billing.check_from_header" and record["outcome"] == "rejected"


def test_client_gone_mid_transaction_is_a_failed_message():
    """The app leaves after an accepted RCPT: the delivery is aborted and the result says failed."""
    host = FakeHost(config())
    session = start(host)
    say(session, "EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>")
    session.close("connection lost")
    [delivery] = host.deliveries
    assert delivery.aborted == ["client session ended (connection lost)"]
    [record] = host.events("message.result")
    assert record["outcome"] == "failed" and record["recipients"][0]["result"] == "failed"
    assert host.events("session.closed")[0]["failed"] == 1


def test_behind_a_proxy_header_the_first_command_decides_on_the_client():
    """listener.proxy_protocol: greet at once, decide at the first command with the header's client."""
    host = FakeHost(config())
    session = Session(host, "s1", "127.0.0.1", 5000)  # the balancer's address
    session.expect_proxy_header()
    assert session.greeting().code == 220 and host.events("session.opened") == []
    assert session.awaiting_proxy_header
    session.proxy_header("127.0.0.9", 40000)
    assert say(session, "EHLO a")[0].code == 250
    [opened] = host.events("session.opened")
    assert (opened["client_ip"], opened["proxy_ip"], opened["proxy_port"]) == (
        "127.0.0.9",
        "127.0.0.1",
        5000,
    )
