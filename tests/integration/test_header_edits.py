"""rewrite_from / strip_headers on the bytes the upstream received, through the real gateway."""

from __future__ import annotations

import smtplib

from gateway.testing.trace import without_trace
from tests.conftest import relay_all, upstream_table

HEAD = (
    b"Received: from app.internal (10.0.0.5)\r\n"
    b"\tby app.internal with ESMTP; Sat, 28 Nov 2026 01:00:00 +0000\r\n"
    b'from: "Billing App"\r\n'
    b"  <billing@app.internal>\r\n"
    b"x-originating-ip: [10.0.0.5]\r\n"
    b"To: ops@example.net\r\n"
    b"Subject: invoice\r\n"
    b"\r\n"
)
BODY = (
    b".leading dot\r\nFrom: body text, not a header\r\nReceived: also body\r\n"
    + b"x" * 998
    + b"\r\n"
)


def with_edits(document: dict, **rule: object) -> dict:
    document["rules"][0].update(rule)
    return document


def test_upstream_receives_rewritten_headers_and_the_exact_body(make_upstream, start_gateway, ca):
    """From rewritten, original in Reply-To, named headers gone (folded, any case), body byte for byte."""
    upstream = make_upstream()
    gw = start_gateway(
        with_edits(
            relay_all(upstream_table(upstream, ca.ca_file)),
            rewrite_from="relay@corp.example",
            strip_headers=["Received", "X-Originating-IP"],
        )
    )
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], HEAD + BODY) == {}
    [message] = upstream.wait_for(1)
    assert without_trace(message.content) == (
        b"From: relay@corp.example\r\n"
        b"To: ops@example.net\r\n"
        b"Subject: invoice\r\n"
        b'Reply-To: "Billing App"\r\n  <billing@app.internal>\r\n'
        b"\r\n" + BODY
    )
    [result] = gw.audit.wait_for("message.result")
    assert result["original_from"] == '"Billing App" <billing@app.internal>'
    assert result["size"] == len(
        HEAD + BODY
    )  # size and sha256 describe the message as the app sent it


def test_recipient_of_a_rule_with_other_edits_is_deferred(make_upstream, start_gateway, ca):
    """Two recipients whose rules edit headers differently cannot share one message: 452 4.5.3."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["rules"] = [
        {
            "name": "rewritten",
            "action": "relay",
            "upstream": "up",
            "recipients": ["*@example.net"],
            "rewrite_from": "relay@corp.example",
        },
        {"name": "plain", "action": "relay", "upstream": "up"},
    ]
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        refused = client.sendmail(
            "app@example.com", ["ops@example.net", "ops@example.org"], HEAD + BODY
        )
    expected = (
        b"4.5.3 Recipient needs other header edits (rewrite_from/strip_headers); send it separately"
    )
    assert refused == {"ops@example.org": (452, expected)}
    [message] = upstream.wait_for(1)
    assert (
        message.recipients == ["ops@example.net"]
        and b"\r\nFrom: relay@corp.example\r\n" in message.content
    )
