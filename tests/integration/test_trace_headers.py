"""The trace fields and the loop guard on the bytes the upstream got, through the real gateway.

Received prepended, a missing Date and Message-ID appended, the rest byte for byte, in relay
(cut-through) and queue (from the spool) mode; more than 30 Received fields refused
``554 5.4.6`` with nothing delivered or queued; the audit names what was added.
"""

from __future__ import annotations

import os
import re
import smtplib

import pytest

from gateway.testing.trace import DATE, MESSAGE_ID, split_trace
from tests.conftest import relay_all, upstream_table
from tests.integration.queueing import queue_document

HEAD = b"From: app@example.com\r\nTo: ops@example.net\r\nSubject: traced\r\n"
BODY = b"\r\n.leading dot\r\nReceived: body text, not a field\r\n" + b"x" * 998 + b"\r\n"
DATED = b"Date: Sat, 28 Nov 2026 02:00:00 +0100\r\nMessage-ID: <app-1@example.com>\r\n"
GOOD = HEAD + DATED + BODY
OUR_RECEIVED = re.compile(
    rb"Received: from app\.test \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mailgate\.test \(mailgate\) with (?P<with>[A-Z]+) id (?P<id>[0-9a-f]{16});\r\n"
    rb"\t[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n"
)


def received_fields(count: int) -> bytes:
    return b"".join(
        b"Received: from hop%d.example (hop%d.example [192.0.2.%d])\r\n"
        b"\tby hop%d.example; Sat, 28 Nov 2026 01:00:00 +0000\r\n" % (n, n, n, n + 1)
        for n in range(count)
    )


@pytest.fixture(params=["relay", "queue"])
def gateway_for(request, make_upstream, start_gateway, ca, tmp_path):
    """Start a gateway in the mode of the test's parameter; (gateway, upstream)."""

    def start(**listener):
        upstream = make_upstream()
        table = upstream_table(upstream, ca.ca_file)
        if request.param == "relay":
            document = relay_all(table, **listener)
        else:
            document = queue_document(table, str(tmp_path / "spool"))
            document["listener"].update(listener)
        return start_gateway(document), upstream

    start.mode = request.param
    return start


def send(port: int, content: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        return client.data(content)


def audit_record(gw, mode: str) -> dict:
    return gw.audit.wait_for("message.queued" if mode == "queue" else "message.result")[0]


def test_received_is_the_first_line_and_the_rest_is_byte_identical(gateway_for):
    """Relay and queue: our Received (RFC 5321 4.4 form) first, then the app's message unchanged."""
    gw, upstream = gateway_for()
    assert send(gw.port, GOOD)[0] == 250
    [message] = upstream.wait_for(1)
    received = OUR_RECEIVED.match(message.content)
    assert received is not None, message.content[:300]
    assert received["with"] == b"ESMTP" and message.content[received.end() :] == GOOD
    record = audit_record(gw, gateway_for.mode)
    assert received["id"].decode() == record["session_id"]
    assert record["headers_added"] == ["Received"]


def test_add_received_false_adds_no_received(gateway_for):
    """listener.add_received = false: the message goes out exactly as the app sent it."""
    gw, upstream = gateway_for(add_received=False)
    assert send(gw.port, GOOD)[0] == 250
    [message] = upstream.wait_for(1)
    assert message.content == GOOD
    assert "headers_added" not in audit_record(gw, gateway_for.mode)


def test_missing_date_and_message_id_are_appended_to_the_header_section(gateway_for):
    """Without Date and Message-ID, both are added at the end of the header section; the audit says so."""
    gw, upstream = gateway_for()
    assert send(gw.port, HEAD + BODY)[0] == 250
    [message] = upstream.wait_for(1)
    app_bytes, added = split_trace(message.content)
    assert app_bytes == HEAD + BODY and added == ["Received", "Date", "Message-ID"]
    head = message.content[: message.content.index(b"\r\n\r\n") + 2]
    assert re.search(HEAD + DATE + MESSAGE_ID + rb"$", head) is not None
    record = audit_record(gw, gateway_for.mode)
    assert record["headers_added"] == ["Received", "Date", "Message-ID"]
    message_id = re.search(rb"Message-ID: (<[^>]+>)", head)
    assert message_id is not None and record["message_id"] == message_id[1].decode()
    assert message_id[1].endswith(b"@mailgate.test>")


@pytest.mark.parametrize(
    "present",
    [
        b"date: Sat, 28 Nov 2026 01:00:00 +0000\r\nmessage-id: <lower@example.com>\r\n",
        b"DATE:Sat, 28 Nov 2026 01:00:00 +0000\r\nMESSAGE-ID:\r\n <folded@example.com>\r\n",
    ],
)
def test_present_date_and_message_id_are_not_added_again_in_any_case(gateway_for, present):
    """Date and Message-ID present in any case (or folded): nothing but the Received is added."""
    gw, upstream = gateway_for(add_received=False)
    assert send(gw.port, HEAD + present + BODY)[0] == 250
    [message] = upstream.wait_for(1)
    assert message.content == HEAD + present + BODY
    assert "headers_added" not in audit_record(gw, gateway_for.mode)


def test_only_the_missing_one_is_added(gateway_for):
    """A message with a Date but no Message-ID gets only a Message-ID."""
    gw, upstream = gateway_for(add_received=False)
    content = HEAD + DATED.split(b"\r\n")[0] + b"\r\n" + BODY
    assert send(gw.port, content)[0] == 250
    [message] = upstream.wait_for(1)
    assert split_trace(message.content) == (content, ["Message-ID"])


def test_thirty_received_fields_pass(gateway_for):
    """30 Received fields from the app (31 with ours) are not a loop: delivered."""
    gw, upstream = gateway_for()
    content = received_fields(30) + GOOD
    assert send(gw.port, content)[0] == 250
    [message] = upstream.wait_for(1)
    assert split_trace(message.content) == (content, ["Received"])


def test_more_than_thirty_received_fields_are_refused_as_a_loop(gateway_for, tmp_path):
    """31 Received fields: 554 5.4.6 at the dot, nothing delivered or queued, the audit says why."""
    gw, upstream = gateway_for()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        code, text = client.data(received_fields(31) + GOOD)
        client.rset()
        assert client.sendmail("app@example.com", ["ops@example.net"], GOOD) == {}
    assert (code, text[:5]) == (554, b"5.4.6")
    [message] = upstream.wait_for(1)  # the second message only (the first never had its dot)
    assert split_trace(message.content)[0] == GOOD
    refused = gw.audit.wait_for("message.result")[0]
    assert refused["outcome"] == "rejected" and refused["reply"].startswith("554 5.4.6")
    assert "30 Received" in refused["limit"] and "mail loop" in refused["reason"]
    if gateway_for.mode == "queue":
        assert len(gw.audit.named("message.queued")) == 1  # the second message only
        assert os.listdir(tmp_path / "spool" / "incoming") == []
    else:
        assert len(gw.audit.named("message.result")) == 2


def test_authenticated_app_is_traced_as_esmtpa(make_upstream, start_gateway, ca):
    """An app that authenticated: `with ESMTPA` (RFC 3848)."""
    from gateway.policy.passwords import make_hash

    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["apps"] = {"billing": {"password_hash": make_hash("billing-app-password-123")}}
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.login("billing", "billing-app-password-123")
        assert client.sendmail("app@example.com", ["ops@example.net"], GOOD) == {}
    [message] = upstream.wait_for(1)
    received = OUR_RECEIVED.match(message.content)
    assert received is not None and received["with"] == b"ESMTPA"
