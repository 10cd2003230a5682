"""Relay and queue through mailgate to each real server: what arrives is what the app sent."""

from __future__ import annotations

import re

from conftest import expressible, relay_document, upstream
from mail import as_stored, message, send, send_many, tag_of, token
from mtas.common import BOUNCE_SENDER, DOMAIN, OTHER_SENDER, REFUSED, USER

from tests.integration.queueing import queue_document


def relayed(server, gw, content):
    """Send `content` through the gateway (250 expected); the bytes the server stored."""
    code, text = send(gw.port, content)
    assert code == 250, (code, text)
    return server.delivered(tag_of(content))


def test_relay_over_starttls_with_auth_is_byte_intact(server, start_gateway, pki):
    """587 (STARTTLS, TLS 1.3, AUTH): the message arrives in the server's maildir byte for byte."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    content = message(token())
    stored = relayed(server, gw, content)
    assert stored.endswith(as_stored(content))
    [result] = gw.audit.wait_for("message.result")
    assert result["tls_version"] == "TLSv1.3" and result["auth_user"] == USER


def test_relay_over_implicit_tls_with_auth_is_byte_intact(server, start_gateway, pki):
    """465 (implicit TLS, AUTH): the message arrives byte for byte."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], "implicit")))
    content = message(token())
    assert relayed(server, gw, content).endswith(as_stored(content))
    [result] = gw.audit.wait_for("message.result")
    assert result["tls_mode"] == "implicit" and result["auth_user"] == USER


def test_wrong_name_certificate_is_refused(server, start_gateway, pki):
    """The server's certificate names localhost, not 127.0.0.1: 451 4.7.5, nothing sent."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], host="127.0.0.1")))
    code, text = send(gw.port, message(token()))
    assert (code, text.split(b":")[0]) == (451, b"4.7.5 Upstream TLS verification failed")
    [result] = gw.audit.wait_for("message.result")
    assert "auth_user" not in result or result["auth_user"] is None


def test_missing_starttls_is_refused(server, start_gateway, pki):
    """A port that offers no STARTTLS: 451 4.7.10, no plaintext AUTH or mail."""
    expressible(server, "plain")
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], "plain")))
    code, text = send(gw.port, message(token()))
    assert code == 451 and text.startswith(b"4.7.10"), (code, text)
    assert not re.search(r"(?i)\bauth\b.*(ok|succeeded)|sasl_username", server.log_since(mark))


def test_server_refusal_is_passed_on_with_its_own_text(server, start_gateway, pki):
    """A recipient the server refuses: the app gets the server's own code and text."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    code, text = send(gw.port, message(token()), [REFUSED])
    assert (code, server.refusal.encode() in text) == (server.refusal_code, True), (code, text)


def test_sender_not_owned_is_refused_with_the_servers_text(server, start_gateway, pki):
    """reject_sender_login_mismatch: a sender the login does not own gets Postfix's 553 5.7.1."""
    if server.name != "Postfix":
        expressible(server, "sender_login")
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    code, text = send(gw.port, message(token()), sender=OTHER_SENDER)
    assert code == 553 and b"Sender address rejected: not owned by user" in text, (code, text)


def test_ten_messages_travel_over_one_pooled_connection(server, start_gateway, pki):
    """Ten messages, one server connection (one TLS handshake, one AUTH), read from its log."""
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    contents = [message(token()) for _ in range(10)]
    assert [code for code, _ in send_many(gw.port, contents)] == [250] * 10
    for content in contents:
        server.delivered(tag_of(content))
    gw.stop()
    server.wait_closings(mark, server.ports["starttls"])
    assert server.connections(server.log_since(mark), server.ports["starttls"]) == 1


def test_five_megabytes_arrive_intact(server, start_gateway, pki):
    """A 5 MB message arrives byte for byte."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    content = message(token(), line * (5 * 1024 * 1024 // len(line)))
    assert len(content) > 5_000_000
    assert relayed(server, gw, content).endswith(as_stored(content))


def test_twenty_recipients_each_get_the_message(server, start_gateway, pki):
    """One transaction with 20 recipients: 20 deliveries."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    tag = token()
    rcpts = [f"r{n}@{DOMAIN}" for n in range(20)]
    assert send(gw.port, message(tag), rcpts)[0] == 250
    server.delivered(tag)
    found = server.delivered_all(tag, 20)
    assert sorted(server.recipient_of(m) for m in found) == sorted(rcpts)


def test_8bitmime_body_arrives_unchanged(server, start_gateway, pki):
    """BODY=8BITMIME: 8-bit octets arrive as they were sent."""
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    content = message(token(), "Grüße, café, naïve — ½ €\r\n".encode())
    code, _ = send(gw.port, content, mail_options=("BODY=8BITMIME",))
    assert code == 250
    stored = server.delivered(tag_of(content))
    assert stored.endswith(as_stored(content))


def test_auth_login_only_server(server, start_gateway, pki):
    """A server offering AUTH LOGIN alone: mailgate authenticates with LOGIN and relays."""
    expressible(server, "login_only")
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], "login_only")))
    content = message(token())
    assert relayed(server, gw, content).endswith(as_stored(content))
    assert re.search(server.login_logged, server.log_since(mark)), server.log_since(mark)


def test_queue_mode_delivers_after_a_server_restart(server, start_gateway, pki, tmp_path):
    """Queue mode while the server is down: 250 Queued, deferred, delivered once it is back."""
    document = queue_document(upstream(server, pki["ca_file"]), str(tmp_path / "spool"))
    gw = start_gateway(document)
    server.halt()
    try:
        content = message(token())
        code, text = send(gw.port, content)
        assert code == 250 and text.startswith(b"2.0.0 Queued as "), (code, text)
        gw.audit.wait_for("message.deferred")
    finally:
        server.launch()
        server.wait_ready()
    [result] = gw.audit.wait_for("message.result", timeout=60)
    assert result["outcome"] == "delivered"
    assert server.delivered(tag_of(content)).endswith(as_stored(content))


def test_tls12_only_server_is_relayed_to(server, start_gateway, pki):
    """A server that speaks TLS 1.2 at most: relayed over TLS 1.2 (min_tls_version's default)."""
    expressible(server, "tls12")
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], "tls12")))
    content = message(token())
    assert relayed(server, gw, content).endswith(as_stored(content))
    [result] = gw.audit.wait_for("message.result")
    assert result["tls_version"] == "TLSv1.2"


def test_handshake_failure_is_not_called_a_verification_failure(server, start_gateway, pki):
    """min_tls_version 1.3 against a TLS 1.2 server: 451 4.7.5 Upstream TLS handshake failed."""
    expressible(server, "tls12")
    gw = start_gateway(
        relay_document(upstream(server, pki["ca_file"], "tls12", min_tls_version="1.3"))
    )
    code, text = send(gw.port, message(token()))
    assert code == 451 and text.startswith(b"4.7.5 Upstream TLS handshake failed"), (code, text)


def test_queue_mode_dsn_is_accepted_and_delivered(server, start_gateway, pki, tmp_path):
    """Queue mode, a recipient the server refuses: the DSN (MAIL FROM:<>) reaches the sender."""
    document = queue_document(
        upstream(server, pki["ca_file"]), str(tmp_path / "spool"), bounce=True
    )
    document["rules"][0].update(senders=[BOUNCE_SENDER], bounce_to_senders=True)
    gw = start_gateway(document)
    content = message(token())
    code, _ = send(gw.port, content, [REFUSED], sender=BOUNCE_SENDER)
    assert code == 250
    dsn = server.delivered(tag_of(content), timeout=60)
    assert b"report-type=delivery-status" in dsn and b"Action: failed" in dsn
    assert server.recipient_of(dsn) == BOUNCE_SENDER
    bounced = gw.audit.wait_for("message.bounced")
    assert bounced[0]["to"] == BOUNCE_SENDER
