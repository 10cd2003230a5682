"""The upstream connection pool: reuse with RSET, limits, and no reuse of a broken session."""

from __future__ import annotations

import smtplib
import threading

from gateway.testing.trace import without_trace
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
    assert without_trace(message.content) == BODY


def test_failover_after_mail_4xx_returns_the_backup_session_to_the_pool(
    make_upstream, start_gateway, ca
):
    """After a MAIL 4xx moved a transaction to the backup, the backup's only connection is reused."""
    primary, backup = make_upstream(), make_upstream()
    primary.script.mail = "421 4.7.0 Try later"
    document = {
        "listener": {"listen": "127.0.0.1:0", "shutdown_grace": 2},
        "upstreams": {
            "primary": upstream_table(primary, ca.ca_file),
            "backup": upstream_table(backup, ca.ca_file, max_connections=1, command_timeout=5),
        },
        "rules": [{"name": "all", "action": "relay", "upstream": ["primary", "backup"]}],
    }
    gw = start_gateway(document)
    send(gw.port)
    send(
        gw.port
    )  # with the first session leaked, this would wait command_timeout and get 451 4.4.5
    assert len(backup.wait_for(2)) == 2
    assert backup.connections == 1


def test_a_failed_open_wakes_the_transaction_waiting_for_its_slot(make_upstream, start_gateway, ca):
    """With max_connections = 1, a transaction waiting behind a failing open gets its own try at once."""
    upstream = make_upstream(users={"someone@else.test": "x"})  # every AUTH fails
    gw = start_gateway(
        relay_all(upstream_table(upstream, ca.ca_file, max_connections=1, command_timeout=20))
    )
    results: list[object] = []
    done = threading.Event()

    def app() -> None:
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as client:
            client.ehlo()
            client.mail("app@example.com")
            results.append(client.rcpt("ops@example.net"))
        if len(results) == 2:
            done.set()

    for _ in range(2):
        threading.Thread(target=app, daemon=True).start()
    assert done.wait(15), "the second transaction waited for the pool's command_timeout"
    assert [code for code, _ in results] == [451, 451]
    assert len(upstream.auth_attempts) == 2  # each transaction really tried


def test_app_leaving_while_the_session_opens_does_not_leak_it(make_upstream, start_gateway, ca):
    """An app that disconnects while its upstream session is still being opened costs no pool slot."""
    import socket

    upstream = make_upstream()
    hold, entered = threading.Event(), threading.Event()
    authenticate = upstream._authenticate

    def slow_auth(*args):  # runs in the upstream's own thread: hold AUTH until the app has gone
        entered.set()
        assert hold.wait(30)
        return authenticate(*args)

    upstream._authenticate = slow_auth
    gw = start_gateway(
        relay_all(upstream_table(upstream, ca.ca_file, max_connections=1, command_timeout=20))
    )
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall(b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\n")
    assert entered.wait(30)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    gw.audit.wait_for("session.closed")
    hold.set()
    upstream._authenticate = authenticate
    send(gw.port)  # with the slot leaked this waits command_timeout (20 s) and gets 451 4.4.5
    [message] = upstream.wait_for(1, timeout=15)
    assert without_trace(message.content) == BODY
