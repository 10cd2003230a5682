"""The upstream connection pool: reuse with RSET, limits, and no reuse of a broken session."""

from __future__ import annotations

import smtplib
import threading

from tests.conftest import relay_all, upstream_table

BODY = b"Subject: pooled\r\n\r\nbody\r\n"


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("app@example.com", ["ops@example.net"], BODY)


def test_sessions_are_reused_across_app_connections(make_upstream, start_gateway, ca):
    """Five messages from five app connections cost one upstream TLS handshake."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    for _ in range(5):
        send(gw.port)
    assert len(upstream.wait_for(5)) == 5
    assert upstream.connections == 1


def test_pool_max_messages_retires_a_connection(make_upstream, start_gateway, ca):
    """After pool_max_messages messages a connection is closed and a new one opened."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file, pool_max_messages=2)))
    for _ in range(5):
        send(gw.port)
    upstream.wait_for(5)
    assert upstream.connections == 3


def test_max_connections_makes_the_next_transaction_wait(make_upstream, start_gateway, ca):
    """With max_connections = 1, a second concurrent transaction waits for the first, then succeeds."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file, max_connections=1)))
    first = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
    first.ehlo()
    first.mail("app@example.com")
    assert first.rcpt("a@example.net")[0] == 250  # holds the only upstream connection
    done = threading.Event()
    outcome: list[object] = []

    def second() -> None:
        try:
            send(gw.port)
            outcome.append("ok")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)
        done.set()

    threading.Thread(target=second, daemon=True).start()
    assert first.data(BODY)[0] == 250
    first.quit()
    assert done.wait(30) and outcome == ["ok"]
    assert len(upstream.wait_for(2)) == 2 and upstream.connections == 1


def test_a_refused_message_does_not_poison_the_pool(make_upstream, start_gateway, ca):
    """After a message the gateway refused mid-body, the next one is delivered intact."""
    upstream = make_upstream()
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        client.send(b"DATA\r\n")
        assert client.getreply()[0] == 354
        client.send(b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n")
        assert client.getreply()[0] == 550
    send(gw.port)
    [message] = upstream.wait_for(1)
    assert message.content == BODY
