"""Issue 12 item 5: bounces must not reflect mail to anyone (backscatter through our account).

A DSN goes only to a sender the policy vouches for: the *explicit* ``senders`` of the app
that authenticated when the message was queued, or the ``senders`` of a rule marked
``bounce_to_senders = true``; it carries the header section only, never the body, and
``message.bounced`` says which setting allowed it. Anyone else's failure is a dead letter
with ``bounce: "suppressed: sender not vouched for"`` and no DSN. Real sockets, queue mode.
"""

from __future__ import annotations

import json
import smtplib
from typing import Any

import pytest

from gateway.policy.passwords import make_hash
from gateway.queue import bounces
from gateway.queue.envelope import Envelope
from tests.integration.queueing import Upstream, queue_document

VICTIM = "victim@outside.example"
PASSWORD = "billing-app-password-123"
HASH = make_hash(PASSWORD, "scrypt")
SECRET_BODY = b"attacker text the victim must never receive"


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    assert up.server is not None
    up.server.script.rcpt = {"refused@example.net": "550 5.1.1 No such user"}
    yield up
    up.down()


def document(upstream: Upstream, ca_file: str, tmp_path: Any, **rule: Any) -> dict[str, Any]:
    doc = queue_document(upstream.table(ca_file), str(tmp_path / "spool"), bounce=True)
    doc["rules"][0].update(rule)
    doc["apps"] = {
        "open": {"password_hash": HASH},  # senders: any (the default) vouches for nothing
        "billing": {"password_hash": HASH, "senders": ["*@billing.example.com"]},
    }
    return doc


def submit(port: int, sender: str, app: str | None = None, body: bytes | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        if app is not None:
            client.login(app, PASSWORD)
        assert client.mail(sender)[0] == 250
        assert client.rcpt("refused@example.net")[0] == 250  # queued: refused only at delivery
        message = body or (
            b"From: " + sender.encode() + b"\r\nSubject: Click here, victim\r\n\r\n" + SECRET_BODY
        )
        assert client.data(message)[0] == 250


def dsns(upstream: Upstream) -> list[Any]:
    assert upstream.server is not None
    return [m for m in upstream.server.messages if m.sender in ("", "<>")]


@pytest.mark.parametrize(
    ("sender", "app", "rule"),
    [
        pytest.param(VICTIM, None, {}, id="no-app-no-bounce-rule"),
        pytest.param(VICTIM, "open", {}, id="app-with-any-sender"),
        pytest.param(
            "x@billing.example.com",
            None,
            {"senders": ["*@billing.example.com"]},
            id="rule-senders-not-marked",
        ),
        pytest.param(
            VICTIM,
            None,
            {"senders": ["*"], "bounce_to_senders": False},
            id="rule-marked-off",
        ),
        pytest.param(
            "someone@billing.example.com", "open", {}, id="any-app-even-for-a-plausible-sender"
        ),
    ],
)
def test_unvouched_sender_gets_no_dsn(upstream, start_gateway, ca, tmp_path, sender, app, rule):
    """Nothing vouches for the sender: a dead letter, no DSN, the audit says why."""
    gw = start_gateway(document(upstream, ca.ca_file, tmp_path, **rule))
    submit(gw.port, sender, app)
    [dead] = gw.audit.wait_for("message.dead")
    assert dead["bounce"] == "suppressed: sender not vouched for"
    assert gw.audit.named("message.bounced") == []
    gw.stop()
    assert dsns(upstream) == []


@pytest.mark.parametrize(
    ("sender", "app", "rule", "allowed_by"),
    [
        pytest.param(
            "invoices@billing.example.com", "billing", {}, "apps.billing.senders", id="app"
        ),
        pytest.param(
            "noreply@example.com",
            None,
            {"senders": ["*@example.com"], "bounce_to_senders": True},
            "rules[all].bounce_to_senders",
            id="rule",
        ),
    ],
)
def test_vouched_sender_gets_a_headers_only_dsn(
    upstream, start_gateway, ca, tmp_path, sender, app, rule, allowed_by
):
    """Vouched for: one DSN with the header section only (no body), audited with its reason."""
    gw = start_gateway(document(upstream, ca.ca_file, tmp_path, **rule))
    submit(gw.port, sender, app)
    [bounced] = gw.audit.wait_for("message.bounced")
    assert bounced["allowed_by"] == allowed_by and bounced["to"] == sender
    assert upstream.server is not None
    [dsn] = [m for m in upstream.server.wait_for(1) if m.sender in ("", "<>")]
    assert dsn.recipients == [sender]
    assert b"Content-Type: text/rfc822-headers" in dsn.content
    assert b"Subject: Click here, victim" in dsn.content  # the headers, for the sender
    assert SECRET_BODY not in dsn.content
    gw.stop()


def test_message_without_a_header_section_reflects_no_text(upstream, start_gateway, ca, tmp_path):
    """Body text where headers should be never reaches the DSN, even for a vouched sender."""
    gw = start_gateway(document(upstream, ca.ca_file, tmp_path))
    body = SECRET_BODY + b"\r\nSubject: not a header either\r\n\r\nmore\r\n"
    submit(gw.port, "invoices@billing.example.com", "billing", body)
    gw.audit.wait_for("message.bounced")
    assert upstream.server is not None
    [dsn] = [m for m in upstream.server.wait_for(1) if m.sender in ("", "<>")]
    assert SECRET_BODY not in dsn.content and b"not a header" not in dsn.content
    gw.stop()


@pytest.mark.parametrize(
    ("head", "kept"),
    [
        (b"Subject: a\r\n b\r\nX: y\r\n", b"Subject: a\r\n b\r\nX: y\r\n"),
        (b" folded first\r\nSubject: a\r\n", b""),
        (b"Subject: a\r\nnot a field\r\nX: y\r\n", b"Subject: a\r\n"),
        (b"Subject: a\r\n: no name\r\n", b"Subject: a\r\n"),
        (b"Subject: a\r\nunfinished", b"Subject: a\r\n"),
    ],
)
def test_headers_only_stops_at_the_first_line_that_is_not_a_field(head, kept):
    assert bounces.headers_only(head) == kept


def test_envelope_of_an_older_spool_without_app_is_read_and_vouches_nothing():
    """Spools written before the `app` field still read; such a message is bounced by rule only."""
    old = {
        "version": 1,
        "id": "0123456789abcdef",
        "sender": "a@example.com",
        "recipients": [{"address": "b@example.net", "upstream": "up"}],
        "received": 1.0,
    }
    envelope = Envelope.from_json(json.dumps(old).encode())
    assert envelope.app is None
