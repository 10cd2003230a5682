"""The trace through a session (gateway/inbound/trace.py, body.py), with a fake host: no sockets."""

from __future__ import annotations

from gateway.inbound import body
from gateway.inbound.session import Session
from gateway.inbound.trace import upstream_mail
from gateway.policy.headers import HeaderRewriter
from gateway.policy.trace import MAX_RECEIVED, Trace
from gateway.smtp import replies
from gateway.smtp.commands import parse_mail
from gateway.testing.trace import split_trace
from tests.inbound.fakes import FakeHost, config
from tests.inbound.test_session import BODY, answer, say, send_body, start

HOP = b"Received: from hop (hop [192.0.2.1])\r\n\tby next; Sat, 28 Nov 2026 01:00:00 +0000\r\n"


def transaction(host: FakeHost, session: Session, helo: str = "EHLO app.test", size: str = ""):
    say(session, helo, f"MAIL FROM:<app@example.com>{size}", "RCPT TO:<ops@example.net>", "DATA")
    return host.deliveries[0]


def test_received_names_helo_client_host_and_session():
    """`from <HELO> ([ip]) by <listener.hostname> (mailgate) with ESMTP id <session id>`."""
    host = FakeHost(config())
    session = start(host, client="127.0.0.7")
    delivery = transaction(host, session)
    assert answer(send_body(session)).code == 250
    first = delivery.body.split(b"\r\n")[:2]
    assert first == [
        b"Received: from app.test ([127.0.0.7])",
        b"\tby mailgate.test (mailgate) with ESMTP id s1;",
    ]


def test_helo_is_traced_as_smtp():
    """A client that greeted with HELO: `with SMTP`."""
    host = FakeHost(config())
    session = start(host)
    delivery = transaction(host, session, helo="HELO app.test")
    send_body(session)
    assert b"(mailgate) with SMTP id s1;" in delivery.body


def test_behind_a_proxy_header_the_client_is_the_one_it_named():
    """PROXY protocol: the Received names the app's address from the header, not the balancer's."""
    host = FakeHost(config())
    session = Session(host, "s1", "10.9.9.9", 40000)
    session.expect_proxy_header()
    session.greeting()
    session.proxy_header("127.0.0.5", 51000)
    delivery = transaction(host, session)
    send_body(session)
    assert delivery.body.startswith(b"Received: from app.test ([127.0.0.5])\r\n")
    assert b"10.9.9.9" not in delivery.body


def test_a_hostile_helo_cannot_restructure_the_field():
    """A HELO with blanks, comments and a semicolon is written with those characters replaced."""
    host = FakeHost(config())
    session = start(host)
    delivery = transaction(host, session, helo="EHLO x (by evil); for <a@b>")
    send_body(session)
    assert delivery.body.startswith(b"Received: from x??by?evil???for??a?b? ([127.0.0.1])\r\n")


def test_size_to_the_upstream_allows_for_the_trace():
    """MAIL SIZE=n: the delivery (the upstream's MAIL) is told n plus what the trace may add."""
    host = FakeHost(config())
    session = start(host)
    delivery = transaction(host, session, size=" SIZE=1000")
    transaction_ = session.transaction
    assert transaction_ is not None and transaction_.headers is not None
    assert transaction_.headers.trace is not None
    assert delivery.mail.size == 1000 + transaction_.headers.trace.most_added
    send_body(session)
    assert len(delivery.body) <= len(BODY) + transaction_.headers.trace.most_added


def test_without_size_none_is_invented():
    """An app that gave no SIZE: the upstream is given none either."""
    rewriter = HeaderRewriter(None, Trace(b"Received: x\r\n", b"", b""))
    assert upstream_mail(parse_mail("FROM:<a@b.example>"), rewriter).size is None


def test_add_received_false_writes_only_what_is_missing():
    """listener.add_received = false: no Received; a missing Date/Message-ID is still added."""
    host = FakeHost(config(add_received=False))
    session = start(host)
    delivery = transaction(host, session)
    send_body(session)
    assert split_trace(delivery.body) == (BODY, ["Date", "Message-ID"])
    [result] = host.events("message.result")
    assert result["headers_added"] == ["Date", "Message-ID"]
    assert result["message_id"].endswith("@mailgate.test>")


def test_a_loop_is_refused_at_the_dot_and_the_delivery_aborted():
    """31 Received fields: the delivery is aborted at once, 554 5.4.6 comes at the dot, audited."""
    host = FakeHost(config())
    session = start(host)
    delivery = transaction(host, session)
    session.data_started(object())
    session.data_content(HOP * (MAX_RECEIVED + 1))
    assert delivery.aborted == [body.LOOP_REFUSED]
    session.data_content(BODY)
    assert session.data_end(None) == replies.MAIL_LOOP and delivery.finished is None
    assert HOP not in delivery.body
    [result] = host.events("message.result")
    assert result["outcome"] == "rejected" and result["reply"] == str(replies.MAIL_LOOP)
    assert result["limit"] == body.LOOP_LIMIT and "mail loop" in result["reason"]


def test_thirty_received_fields_pass_through_the_session():
    """30 Received fields: delivered, all 30 kept after ours."""
    host = FakeHost(config())
    session = start(host)
    delivery = transaction(host, session)
    assert answer(send_body(session, HOP * MAX_RECEIVED + BODY)).code == 250
    assert split_trace(delivery.body)[0] == HOP * MAX_RECEIVED + BODY and not delivery.aborted


def test_a_loop_in_queue_mode_is_never_committed():
    """Queue mode: the loop aborts the delivery (the spool discards it) and no message.queued is written."""
    document = {"rules": [{"name": "q", "action": "relay", "upstream": "up", "delivery": "queue"}]}
    host = FakeHost(config(document))
    session = start(host)
    delivery = transaction(host, session)
    assert delivery.mode == "queue"
    assert send_body(session, HOP * (MAX_RECEIVED + 1) + BODY) == replies.MAIL_LOOP
    assert delivery.aborted == [body.LOOP_REFUSED] and delivery.finished is None
    assert host.events("message.queued") == []


def test_queued_record_and_origin_carry_the_added_message_id():
    """Queue mode: message.queued names the added fields; the spool's envelope gets our Message-ID."""
    document = {"rules": [{"name": "q", "action": "relay", "upstream": "up", "delivery": "queue"}]}
    host = FakeHost(config(document))
    session = start(host)
    delivery = transaction(host, session)
    assert answer(send_body(session)).code == 250
    [queued] = host.events("message.queued")
    assert queued["headers_added"] == ["Received", "Date", "Message-ID"]
    assert delivery.finished is not None
    _, origin = delivery.finished
    assert origin.message_id == queued["message_id"] and origin.message_id.endswith(
        "@mailgate.test>"
    )


def test_a_stripped_message_id_is_replaced_and_the_audit_names_ours():
    """strip_headers = ["Message-ID"]: the message leaves with ours, and message_id is ours."""
    rule = {"name": "all", "action": "relay", "upstream": "up", "strip_headers": ["Message-ID"]}
    host = FakeHost(config({"rules": [rule]}))
    session = start(host)
    delivery = transaction(host, session)
    sent = b"Message-ID: <app@internal.example>\r\nDate: x\r\n" + BODY
    assert answer(send_body(session, sent)).code == 250
    assert b"app@internal.example" not in delivery.body
    [result] = host.events("message.result")
    assert result["headers_added"] == ["Received", "Message-ID"]
    assert result["message_id"].endswith("@mailgate.test>")
