"""Issue 11's fixes against each real server: what the server's own log says mailgate did."""

from __future__ import annotations

import socket

from conftest import PASSWORD_ENV, expressible, relay_document, upstream
from mail import message, send, send_many, tag_of, token
from mtas.common import PASSWORD, REFUSED, greets
from mtas.exim import PER_CONNECTION

from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess, clean_env

OPENSMTPD_MAX_MAILS = 100  # smtpd.conf(5): smtp limit max-mails, default 100


def assert_all_quit(server, mark, port, count=1):
    """Every connection on `port` since `mark` ended with the client's QUIT (none was dropped)."""
    closings = server.wait_closings(mark, port, count)
    assert closings and all(c.quit for c in closings), [c.line for c in closings]
    if server.name == "Postfix":
        assert server.lost(server.log_since(mark), port) == []


def test_per_connection_message_limit_is_never_seen_by_the_app(server, start_gateway, pki):
    """The server's per-connection message limit: every message gets 250, and the pool learns it."""
    expressible(server, "per_connection_limit")
    role, limit = ("per_connection", PER_CONNECTION) if server.name == "Exim" else ("starttls", 100)
    if server.name == "OpenSMTPD":
        limit = OPENSMTPD_MAX_MAILS
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], role)))
    contents = [message(token()) for _ in range(limit + 3)]
    replies = send_many(gw.port, contents)
    assert [code for code, _ in replies] == [250] * len(contents), replies[limit - 1 : limit + 2]
    server.delivered(tag_of(contents[-1]))
    results = gw.audit.wait_for("message.result", len(contents))
    [retried] = [r for r in results if "connection_retried" in r]
    assert retried["connection_retried"]["carried"] == limit, retried["connection_retried"]


def test_refused_transaction_keeps_the_connection_and_ends_with_quit(server, start_gateway, pki):
    """A refused recipient, then a good message: one connection (RSET, not a new handshake), QUIT."""
    port = server.ports["starttls"]
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"])))
    assert send(gw.port, message(token()), [REFUSED])[0] == server.refusal_code
    content = message(token())
    assert send(gw.port, content)[0] == 250
    server.delivered(tag_of(content))
    gw.stop()
    assert_all_quit(server, mark, port)
    assert server.connections(server.log_since(mark), port) == 1


def test_quit_after_auth_refused(server, start_gateway, pki, monkeypatch):
    """A wrong password: the app gets 451 4.7.0, the server sees QUIT, not a reset."""
    monkeypatch.setenv("MAILGATE_INTEROP_WRONG", PASSWORD + "-wrong")
    port = server.ports["starttls"]
    mark = server.mark()
    gw = start_gateway(
        relay_document(upstream(server, pki["ca_file"], password_env="MAILGATE_INTEROP_WRONG"))
    )
    code, text = send(gw.port, message(token()))
    assert code == 451 and text.startswith(b"4.7.0"), (code, text)
    assert_all_quit(server, mark, port)


def test_quit_after_missing_starttls(server, start_gateway, pki):
    """A server without STARTTLS: mailgate says QUIT before it closes."""
    expressible(server, "plain")
    port = server.ports["plain"]
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], "plain")))
    assert send(gw.port, message(token()))[0] == 451
    assert_all_quit(server, mark, port)


def test_quit_on_sigterm_with_pooled_connections(server, pki, tmp_path):
    """`mailgate run` with a pooled connection open, then SIGTERM: the server sees QUIT."""
    port = server.ports["starttls"]
    mark = server.mark()
    config = write_toml(
        relay_document(upstream(server, pki["ca_file"])), str(tmp_path / "mailgate.toml")
    )
    process = MailgateProcess(
        "run", "--config", config, env=clean_env(**{PASSWORD_ENV: PASSWORD}), cwd=str(tmp_path)
    )
    try:
        content = message(token())
        assert send(process.port, content)[0] == 250
        server.delivered(tag_of(content))
    finally:
        code, _, stderr = process.stop()
    assert code == 0, stderr
    assert_all_quit(server, mark, port)


def test_tls_alert_on_bad_certificate(server, start_gateway, pki):
    """A certificate that fails verification ends in a TLS alert the server logs, not a reset."""
    mark = server.mark()
    gw = start_gateway(relay_document(upstream(server, pki["ca_file"], host="127.0.0.1")))
    assert send(gw.port, message(token()))[0] == 451
    server.wait_log(mark, server.closing_pattern())
    text = server.log_since(mark)
    assert server.tls_alert_logged(text), text


def test_enhanced_code_is_null_when_the_server_sent_none(server, start_gateway, pki, monkeypatch):
    """`535` without an enhanced code: the audit records upstream_enhanced null, the text as sent."""
    expressible(server, "enhanced_null")
    monkeypatch.setenv("MAILGATE_INTEROP_WRONG", PASSWORD + "-wrong")
    gw = start_gateway(
        relay_document(upstream(server, pki["ca_file"], password_env="MAILGATE_INTEROP_WRONG"))
    )
    assert send(gw.port, message(token()))[0] == 451
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_code"] == 535 and result["upstream_enhanced"] is None, result
    assert result["upstream_reply"] == server.auth_refusal


def test_421_greeting_fails_over_and_cools_down(server, start_gateway, pki):
    """A 421 greeting (connection-rate limit): the message goes to the next upstream, and the
    next message tries the limited one last."""
    expressible(server, "limited")
    limited = server.ports["limited"]
    # Postfix: the one connection a minute it allows; Exim: the one connection at a time
    probe = socket.create_connection(("127.0.0.1", limited), timeout=5)
    probe.recv(512)
    assert not greets(limited)  # a 421 greeting now
    gw = start_gateway(
        relay_document(
            upstream(server, pki["ca_file"], "limited"), upstream(server, pki["ca_file"])
        )
    )
    first, second = message(token()), message(token())
    try:
        assert send(gw.port, first)[0] == 250
    finally:
        probe.close()
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream"] == "up1", result
    [tried] = result["upstreams_tried"]
    assert tried["upstream"] == "up0" and "421" in tried["reason"], tried
    assert send(gw.port, second)[0] == 250
    results = gw.audit.wait_for("message.result", 2)
    assert results[1]["upstream"] == "up1" and "upstreams_tried" not in results[1], results[1]
    server.delivered(tag_of(second))
