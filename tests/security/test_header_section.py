"""Issue 12 item 6: a header section the gateway and a receiver could split differently.

Where a header edit (``rewrite_from``/``strip_headers``) or the From: check applies, a header
section that is not RFC 5322 well formed is refused ``550 5.6.0`` before the final dot leaves
(relay: the upstream never gets it; queue: nothing is committed), and ``message.result`` says
which setting refused it and why. The grammar is in docs/security.md.
"""

from __future__ import annotations

import smtplib

import pytest

from gateway.policy.passwords import make_hash
from gateway.smtp import replies
from gateway.testing.trace import split_trace, without_trace
from tests.conftest import relay_all, upstream_table
from tests.integration.queueing import queue_document

APP_PASSWORD = "billing-app-password-123"
GOOD = b"From: invoices@billing.example.com\r\nSubject: fine\r\n\r\nbody\r\n"
FORGED = b"Received: from secret.internal\r\nFrom: ceo@other.example\r\n\r\nbody\r\n"

# Each header section starts or holds a line that is neither a field nor a continuation; a
# receiver that reads past it (or ends the headers there) would see FORGED's fields unedited.
MALFORMED = {
    "first line white space only": b" \r\n" + FORGED,
    "first line a tab only": b"\t\r\n" + FORGED,
    "first line a continuation": b" X-Folded: y\r\n" + FORGED,
    "line beginning with a colon": b"Subject: x\r\n: y\r\n" + FORGED,
    "colon only": b"Subject: x\r\n:\r\n" + FORGED,
    "white space line inside": b"Subject: x\r\n \r\n" + FORGED,
    "white space before the colon": b"Subject: x\r\nReceived : y\r\n" + FORGED,
    "a line without a colon": b"Subject: x\r\nnot a header\r\n" + FORGED,
    "8-bit field name": b"Subj\xc3\xa9ct: x\r\n" + FORGED,
    "mbox From_ line": b"From ceo@other.example Sat Nov 28 01:00:00 2026\r\n" + FORGED,
    "no header section, a body": b"\r\n" + FORGED,
    "space then the blank line": b"Subject: x\r\n \t \r\n\r\n" + FORGED,
}


def _edited(make_upstream, ca, document_for=relay_all, **rule):
    upstream = make_upstream()
    document = document_for(upstream_table(upstream, ca.ca_file))
    document["rules"][0].update(rule)
    return document, upstream


def _refused(gw, upstream, content: bytes, *, login: bool = False) -> tuple[int, bytes]:
    """Send `content` (refused), then GOOD on the same session: the only message delivered."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        if login:
            client.login("billing", APP_PASSWORD)
        client.mail("invoices@billing.example.com")
        client.rcpt("ops@example.net")
        answer = client.data(content)
        client.rset()
        assert client.sendmail("invoices@billing.example.com", ["ops@example.net"], GOOD) == {}
    [message] = upstream.wait_for(1)
    assert b"Subject: fine\r\n" in message.content and message.content.endswith(b"\r\n\r\nbody\r\n")
    return answer


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize(
    ("rule", "limit"),
    [
        ({"strip_headers": ["Received"]}, "rules[all].strip_headers"),
        ({"rewrite_from": "relay@corp.example"}, "rules[all].rewrite_from"),
    ],
)
def test_malformed_header_section_is_refused_where_an_edit_applies(
    name, rule, limit, make_upstream, start_gateway, ca
):
    """Prevents a header edit from being bypassed by a line the edit and the next hop read
    differently: 550 5.6.0, no dot upstream, the audit names the rule's key and the line."""
    document, upstream = _edited(make_upstream, ca, **rule)
    gw = start_gateway(document)
    code, text = _refused(gw, upstream, MALFORMED[name])
    assert (code, text) == (550, b"5.6.0 " + replies.HEADERS_MALFORMED.text.encode())
    result = gw.audit.wait_for("message.result")[0]
    assert result["outcome"] == "rejected" and result["limit"] == limit
    assert result["reason"] and result["reply"].startswith("550 5.6.0")


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_header_section_is_refused_where_the_from_check_applies(
    name, make_upstream, start_gateway, ca
):
    """Prevents the From: check from being bypassed the same way (a From it never saw)."""
    document, upstream = _edited(make_upstream, ca)
    document["apps"] = {
        "billing": {
            "password_hash": make_hash(APP_PASSWORD, "scrypt"),
            "senders": ["*@billing.example.com"],
            "check_from_header": True,
        }
    }
    gw = start_gateway(document)
    owned = MALFORMED[name].replace(b"ceo@other.example", b"invoices@billing.example.com")
    code, text = _refused(gw, upstream, owned, login=True)
    assert (code, text) == (550, b"5.6.0 " + replies.HEADERS_MALFORMED.text.encode())
    result = gw.audit.wait_for("message.result")[0]
    assert result["limit"] == "apps.billing.check_from_header"
    assert result["reply"].startswith("550 5.6.0")


def test_malformed_header_section_is_not_committed_in_queue_mode(
    make_upstream, start_gateway, ca, tmp_path
):
    """Queue mode: the refused message is never committed to the spool (nor delivered later)."""
    upstream = make_upstream()
    document = queue_document(upstream_table(upstream, ca.ca_file), str(tmp_path / "spool"))
    document["rules"][0]["strip_headers"] = ["Received"]
    gw = start_gateway(document)
    code, _ = _refused(gw, upstream, MALFORMED["line beginning with a colon"])
    assert code == 550
    assert len(gw.audit.named("message.queued")) == 1  # GOOD only
    refused = gw.audit.wait_for("message.result")[0]
    assert refused["limit"] == "rules[all].strip_headers" and refused["outcome"] == "rejected"


def test_well_formed_headers_are_edited_and_pass(make_upstream, start_gateway, ca):
    """The control: folded fields, `Name:value` without a space, an all-header message pass."""
    document, upstream = _edited(make_upstream, ca, strip_headers=["Received"])
    gw = start_gateway(document)
    messages = [
        b"Received: a\r\n\tb\r\nSubject:x\r\nX-Empty:\r\n\r\nbody\r\n",
        b"Subject: only headers\r\nReceived: a",
    ]
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        for content in messages:
            assert client.sendmail("app@example.com", ["ops@example.net"], content) == {}
    first, second = upstream.wait_for(2)
    assert without_trace(first.content) == b"Subject:x\r\nX-Empty:\r\n\r\nbody\r\n"
    assert without_trace(second.content) == b"Subject: only headers\r\n"


def test_empty_message_is_refused_where_an_edit_applies(make_upstream, start_gateway, ca):
    """A message with no line at all has no header section either: refused, not given a From."""
    document, upstream = _edited(make_upstream, ca, rewrite_from="relay@corp.example")
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        client.putcmd("DATA")
        assert client.getreply()[0] == 354
        client.send(b".\r\n")
        assert client.getreply()[0] == 550
    assert upstream.messages == []


def test_without_edits_or_checks_a_malformed_section_is_relayed_as_sent(
    make_upstream, start_gateway, ca
):
    """Nothing to bypass, nothing refused: where no check applies the message goes as sent,
    with only the gateway's Received before it (nothing is added inside it)."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    content = MALFORMED["line beginning with a colon"]
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], content) == {}
    [message] = upstream.wait_for(1)
    assert split_trace(message.content) == (content, ["Received"])
