"""Issue 4 class 6: connection limits, slow clients, error limit, floods, wrong protocols, rates."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading

import pytest

from tests.conftest import relay_all, upstream_table

BODY = b"Subject: t\r\n\r\nbody\r\n"


@pytest.fixture
def gateway(make_upstream, start_gateway, ca):
    def start(rule: dict | None = None, **listener):
        upstream = make_upstream()
        document = relay_all(upstream_table(upstream, ca.ca_file), **listener)
        document["rules"][0].update(rule or {})
        return start_gateway(document), upstream

    return start


def greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock, sock.makefile("rb").readline()


def test_max_connections_refuses_with_421(gateway):
    """Past listener.max_connections, a new connection gets 421 4.7.0 and is closed."""
    gw, _ = gateway(max_connections=2, max_connections_per_client=10)
    first, second = greeting(gw.port), greeting(gw.port)
    sock, line = greeting(gw.port)
    assert line.startswith(b"421 4.7.0")
    assert sock.recv(1) == b""
    assert gw.audit.wait_for("connection.refused")[0]["limit"] == "listener.max_connections"
    for s, _ in (first, second):
        s.close()


def test_max_connections_per_client_refuses_with_421(gateway):
    """Past listener.max_connections_per_client from one address: 421 4.7.0."""
    gw, _ = gateway(max_connections_per_client=1)
    first = greeting(gw.port)
    sock, line = greeting(gw.port)
    assert line.startswith(b"421 4.7.0 Too many connections from your address")
    first[0].close()


def test_slow_drip_command_cannot_hold_the_session(gateway):
    """Bytes trickling in without completing a command do not reset the idle timeout."""
    gw, _ = gateway(idle_timeout=1)
    sock, _ = greeting(gw.port)
    stop = threading.Event()

    def drip() -> None:  # the attack: one byte every 100 ms, never a CRLF
        while not stop.wait(0.1):
            try:
                sock.send(b"N")
            except OSError:
                return

    threading.Thread(target=drip, daemon=True).start()
    try:
        assert sock.makefile("rb").readline().startswith(b"421 4.4.2")
    finally:
        stop.set()


def test_data_timeout_closes_a_stalled_body(gateway):
    """A client that stops sending in the middle of DATA gets 421 after listener.data_timeout."""
    gw, upstream = gateway(data_timeout=1)
    sock, _ = greeting(gw.port)
    reader = sock.makefile("rb")
    sock.sendall(
        b"EHLO a\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: x\r\n"
    )
    lines = []
    while not lines or not lines[-1].startswith(b"421"):
        lines.append(reader.readline())
        assert lines[-1], "closed without 421"
    assert lines[-1].startswith(b"421 4.4.2")
    assert upstream.messages == []


def test_minimum_data_rate(gateway, monkeypatch):
    """A body trickled below listener.min_data_rate is cut off with 421 4.4.2 and not delivered."""
    import gateway.inbound.timeouts as timeouts

    monkeypatch.setattr(timeouts, "MIN_RATE_GRACE", 0.5)
    gw, upstream = gateway(min_data_rate=1000)
    sock, _ = greeting(gw.port)
    reader = sock.makefile("rb")
    sock.sendall(b"EHLO a\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    stop = threading.Event()

    def trickle() -> None:  # the attack: 10 bytes per 100 ms = 100 B/s
        while not stop.wait(0.1):
            try:
                sock.send(b"xxxxxxxx\r\n")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        last = b""
        while not last.startswith(b"421"):
            last = reader.readline()
            assert last, "closed without 421"
        assert last.startswith(b"421 4.4.2 Data rate too low")
    finally:
        stop.set()
    assert upstream.messages == []


def test_error_limit_closes_with_421(gateway):
    """After listener.max_errors bad commands the session ends with 421 4.7.0."""
    gw, _ = gateway(max_errors=3)
    sock, _ = greeting(gw.port)
    sock.sendall(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    reader = sock.makefile("rb")
    lines = [reader.readline() for _ in range(4)]
    assert [line[:3] for line in lines] == [b"500", b"500", b"500", b"421"]
    assert reader.readline() == b""


def test_pipelining_flood_that_never_reads_is_throttled(gateway):
    """A client that floods commands and never reads replies is paused, not buffered without bound."""
    gw, _ = gateway()
    sock, _ = greeting(gw.port)
    sock.settimeout(3)
    chunk = b"NOOP\r\n" * 10000
    sent = 0
    blocked = False
    while sent < 256 * 2**20:
        try:
            sock.sendall(chunk)
        except (socket.timeout, TimeoutError):
            blocked = True
            break
        sent += len(chunk)
    assert blocked, f"gateway kept reading {sent} bytes of commands with nobody reading replies"
    sock.close()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:  # and it still serves others
        assert client.noop()[0] == 250


def test_tls_client_hello_on_plaintext_port_is_dropped(gateway):
    """A TLS handshake sent to the plaintext port is closed at once, without harm."""
    gw, _ = gateway()
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    raw.makefile("rb").readline()
    context = ssl.create_default_context()
    with pytest.raises((ssl.SSLError, OSError)):
        context.wrap_socket(raw, server_hostname="localhost")
    [closed] = gw.audit.wait_for("session.closed")
    assert closed["reason"] == "TLS handshake on the plaintext port"


def test_http_request_is_refused(gateway):
    """An HTTP request to the SMTP port gets 421 4.7.0 and the connection is closed."""
    gw, _ = gateway()
    sock, _ = greeting(gw.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: mailgate\r\n\r\n")
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"421 4.7.0")
    assert reader.readline() == b""


def test_rule_rate_limit_answers_450(gateway):
    """A rule with rate = "2/minute" accepts two messages, then answers 450 4.7.1."""
    gw, upstream = gateway(rule={"rate": "2/minute"})
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        for _ in range(2):
            client.sendmail("a@example.com", ["b@example.net"], BODY)
        client.mail("a@example.com")
        code, text = client.rcpt("b@example.net")
    assert (code, text[:5]) == (450, b"4.7.1")
    assert len(upstream.wait_for(2)) == 2
    results = gw.audit.wait_for("message.result", 3)
    assert results[-1]["recipients"][0]["limit"] == "rules[all].rate"
