"""Ending upstream connections as RFC 5321 4.1.1.10 asks: QUIT, its 221, then a clean close.

Every close the gateway chooses — after a refusal during session set-up, or for the pooled
connections of a stopping daemon — says QUIT and waits for the answer before it closes, so
the server logs a clean end instead of "lost connection after EHLO" or "Connection reset by
peer" (which log watchers such as fail2ban count against the gateway's address). The
upstreams are aiosmtpd servers that count the QUITs they hear and how each connection ended.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess, clean_env
from tests.conftest import PASSWORD, USER, relay_all, upstream_table
from tests.integration.queueing import message, queue_document, send
from tests.integration.test_reload import reload
from tests.security.conftest import try_recipient

EXIM_535 = "535 Incorrect authentication data"  # Exim's and OpenSMTPD's: no enhanced code


def test_upstream_without_starttls_hears_quit_before_the_close(make_upstream, start_gateway, ca):
    """STARTTLS not offered: the gateway says QUIT and closes cleanly, no mail in clear."""
    upstream = make_upstream("none")
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.10"), (code, text)
    assert upstream.wait_closed(1) == [None]
    assert upstream.quits == 1 and upstream.messages == []


def test_refused_auth_hears_quit_before_the_close(make_upstream, start_gateway, ca):
    """AUTH answered 535: the gateway says QUIT, then closes cleanly."""
    upstream = make_upstream(users={USER: "not-" + PASSWORD})
    upstream.script.auth_refusal = EXIM_535
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert try_recipient(gw.port)[0] == 451
    assert upstream.wait_closed(1) == [None]
    assert upstream.quits == 1 and upstream.auth_attempts == [(USER, False)]


def test_refused_auth_is_recorded_as_the_server_sent_it(make_upstream, start_gateway, ca):
    """A 535 without an enhanced code: the audit says 535, null, its text; the app gets 4.7.0."""
    upstream = make_upstream(users={USER: "not-" + PASSWORD})
    upstream.script.auth_refusal = EXIM_535
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    assert try_recipient(gw.port) == (451, b"4.7.0 Upstream authentication failed")
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream_code"] == 535
    assert result["upstream_enhanced"] is None
    assert result["upstream_reply"] == "Incorrect authentication data"
    assert "5.0.0" not in result["upstream_error"], result


def test_queued_delivery_refused_auth_is_recorded_as_sent(
    make_upstream, start_gateway, ca, tmp_path
):
    """Queue mode: delivery.attempt records the bare 535 as sent, and the upstream hears QUIT."""
    upstream = make_upstream(users={USER: "not-" + PASSWORD})
    upstream.script.auth_refusal = EXIM_535
    document = queue_document(upstream_table(upstream, ca.ca_file), str(tmp_path / "spool"))
    gw = start_gateway(document)
    assert send(gw.port, message(1))[0] == 250
    attempt = gw.audit.wait_for("delivery.attempt")[0]
    assert (attempt["upstream_code"], attempt["upstream_enhanced"]) == (535, None)
    assert attempt["upstream_reply"] == "Incorrect authentication data"
    [recipient] = attempt["recipients"]
    assert recipient["result"] == "deferred" and recipient["reply"].startswith("451 4.7.0")
    assert upstream.wait_closed(1) == [None] and upstream.quits >= 1


def open_transaction(port: int) -> smtplib.SMTP:
    """An app with MAIL and RCPT accepted: the gateway holds an upstream session for it."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("app.test")
    assert client.mail("app@example.com")[0] == 250
    assert client.rcpt("ops@example.net")[0] == 250
    return client


def test_sigterm_says_quit_on_every_pooled_connection(make_upstream, ca, tmp_path: Path):
    """`mailgate run` stopping with two idle pooled sessions: each hears QUIT and closes cleanly."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file), shutdown_grace=10)
    config = write_toml(document, str(tmp_path / "mailgate.toml"))
    daemon = MailgateProcess(
        "run", "--config", config, env=clean_env(MAILGATE_TEST_PASSWORD=PASSWORD)
    )
    try:
        first, second = open_transaction(daemon.port), open_transaction(daemon.port)
        for client in (first, second):  # two sessions at once: two pooled connections
            assert client.data(b"Subject: pooled\r\n\r\nbody\r\n")[0] == 250
            client.quit()
        assert len(upstream.wait_for(2)) == 2 and upstream.connections == 2
        assert upstream.quits == 0 and upstream.ended == []  # idle in the pool
    finally:
        code, _, stderr = daemon.stop()
    assert code == 0, stderr
    assert upstream.wait_closed(2) == [None, None]
    assert upstream.quits == 2


def test_reload_says_quit_on_the_retired_pools_idle_connection(make_upstream, start_gateway, ca):
    """A reload retires the old pool: its idle session hears QUIT and closes cleanly."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert (
            client.sendmail("app@example.com", ["ops@example.net"], b"Subject: x\r\n\r\n.\r\n")
            == {}
        )
    assert upstream.wait_for(1) and upstream.ended == []  # the session is idle in the pool
    reload(gw, document)
    assert upstream.wait_closed(1) == [None]
    assert upstream.quits == 1
