"""The app-facing side: access, policy, limits, framing, pipelining, timeouts."""

from __future__ import annotations

import smtplib
import socket

import pytest

from tests.conftest import relay_all, upstream_table

BODY = b"Subject: t\r\n\r\nbody\r\n"


@pytest.fixture
def relay(make_upstream, start_gateway, ca):
    """A gateway relaying everything to a STARTTLS upstream; returns (gateway, upstream)."""

    def make(**listener):
        upstream = make_upstream()
        return start_gateway(relay_all(upstream_table(upstream, ca.ca_file), **listener)), upstream

    return make


def raw_session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.makefile("rb").readline()
    return sock


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` complete (possibly multi-line) replies; return their last lines."""
    reader = sock.makefile("rb")
    out = []
    while len(out) < count:
        line = reader.readline()
        assert line, f"connection closed after {len(out)} replies"
        if line[3:4] == b" ":
            out.append(line.rstrip(b"\r\n"))
    return out


def test_denied_client_gets_554_and_nothing_is_relayed(make_upstream, start_gateway, ca):
    """A client outside allowed_clients is greeted with 554 5.7.1; MAIL and RCPT get refused."""
    upstream = make_upstream()
    gw = start_gateway(
        relay_all(upstream_table(upstream, ca.ca_file), allowed_clients=["10.0.0.0/8"])
    )
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"554 5.7.1")
    sock.sendall(
        b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n"
    )
    lines = [reader.readline() for _ in range(5)]
    assert [line[:3] for line in lines] == [b"503"] * 4 + [b"221"]
    assert upstream.connections == 0
    [denied] = gw.audit.wait_for("session.denied")
    assert denied["limit"] == "listener.allowed_clients"


def test_no_matching_rule_is_550_5_7_1(make_upstream, start_gateway, ca):
    """A recipient no rule matches is refused: the gateway is closed by default."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["rules"] = [
        {"name": "only-net", "recipients": ["*@example.net"], "action": "relay", "upstream": "up"}
    ]
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        assert client.rcpt("x@elsewhere.example") == (
            550,
            b"5.7.1 Relay access denied: no rule matches this recipient",
        )
    [result] = gw.audit.wait_for("message.result")
    assert result["recipients"][0]["limit"] == "no matching rule"
    assert upstream.connections == 0


def test_reject_rule_names_itself(make_upstream, start_gateway, ca):
    """A reject rule's refusal names the rule, in the reply and the audit."""
    upstream = make_upstream()
    document = relay_all(upstream_table(upstream, ca.ca_file))
    document["rules"].insert(
        0, {"name": "no-gmail", "recipients": ["*@gmail.com"], "action": "reject"}
    )
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        code, text = client.rcpt("someone@GMAIL.com")
    assert code == 550 and b"no-gmail" in text
    [result] = gw.audit.wait_for("message.result")
    assert result["recipients"][0]["rule"] == "no-gmail"


def test_ehlo_advertises_the_extensions(relay):
    """EHLO offers SIZE, PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES (and no AUTH/STARTTLS)."""
    gw, _ = relay(max_message_size=100000)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "100000"
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes"):
            assert ext in client.esmtp_features


def test_size_parameter_over_limit_is_552(relay):
    """MAIL FROM with SIZE= above max_message_size gets 552 5.3.4 at once."""
    gw, _ = relay(max_message_size=10000)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert client.mail("app@example.com", ["SIZE=20000"]) == (
            552,
            b"5.3.4 Message size exceeds the fixed limit",
        )


def test_message_over_limit_is_552_and_not_relayed(relay):
    """A body that grows past max_message_size gets 552 5.3.4; the upstream gets nothing."""
    gw, upstream = relay(max_message_size=10000)
    body = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 0 + (b"y" * 98 + b"\r\n") * 200
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        client.rcpt("ops@example.net")
        assert client.data(body)[0] == 552
        assert client.noop()[0] == 250  # the session goes on
    assert upstream.messages == []
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "rejected" and result["limit"] == "listener.max_message_size"
    assert "upstream_error" not in result and "size exceeds" in result["gateway_abort"]


def test_recipient_limit_is_452_4_5_3(relay):
    """More than max_recipients recipients: the extra ones get 452 4.5.3."""
    gw, upstream = relay(max_recipients=2)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        assert client.rcpt("a@example.net")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        assert client.rcpt("c@example.net") == (452, b"4.5.3 Too many recipients")
        assert client.data(BODY)[0] == 250
    [message] = upstream.wait_for(1)
    assert message.recipients == ["a@example.net", "b@example.net"]


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: x\r\n\r\nbare LF\nhere\r\n",
        b"Subject: x\r\n\r\nbare CR\rhere\r\n",
        b"Subject: x\r\n\r\nNUL\x00here\r\n",
        b"Subject: x\r\n\r\nsmuggle\n.\nMAIL FROM:<evil@example.com>\r\n",
    ],
)
def test_bare_cr_lf_nul_in_data_refused_and_never_forwarded(body, relay):
    """Bare CR, bare LF or NUL in DATA: 550 5.5.2, the upstream never sees the message."""
    gw, upstream = relay()
    sock = raw_session(gw.port)
    sock.sendall(
        b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"
    )
    assert [r[:3] for r in read_replies(sock, 4)] == [b"250", b"250", b"250", b"354"]
    sock.sendall(body + b".\r\nNOOP\r\n")
    final, noop = read_replies(sock, 2)
    assert final.startswith(b"550 5.5.2")
    assert noop.startswith(b"250")  # nothing of the body was taken as a command
    assert upstream.messages == []
    sock.close()


def test_overlong_data_line_refused_without_running_body_as_commands(relay):
    """A body line over 1000 octets ends the transaction; text after it is not executed."""
    gw, upstream = relay()
    sock = raw_session(gw.port)
    sock.sendall(
        b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"
    )
    read_replies(sock, 4)
    sock.sendall(b"x" * 5000 + b"\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\n.\r\nNOOP\r\n")
    final, noop = read_replies(sock, 2)
    assert final.startswith(b"550 5.5.2")
    assert noop.startswith(b"250 2.0.0 OK")
    assert upstream.messages == []


def test_overlong_command_line_is_500(relay):
    """A command line past the RFC 5321 limit gets 500 5.5.2 and the session continues."""
    gw, _ = relay()
    sock = raw_session(gw.port)
    sock.sendall(b"NOOP " + b"a" * 3000 + b"\r\nNOOP\r\n")
    assert [r[:9] for r in read_replies(sock, 2)] == [b"500 5.5.2", b"250 2.0.0"]


def test_pipelined_replies_come_in_order(relay):
    """With PIPELINING, replies come back in command order even when RCPT waits on the upstream."""
    gw, upstream = relay()
    upstream.script.rcpt["no@example.net"] = "550 5.1.1 unknown"
    sock = raw_session(gw.port)
    sock.sendall(
        b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.net>\r\n"
        b"RCPT TO:<no@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    )
    replies = read_replies(sock, 6)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"550", b"250", b"354"]
    sock.sendall(BODY + b".\r\nQUIT\r\n")
    assert [r[:3] for r in read_replies(sock, 2)] == [b"250", b"221"]
    [message] = upstream.wait_for(1)
    assert message.recipients == ["a@example.net", "b@example.net"]


def test_idle_timeout_is_421_4_4_2(relay):
    """A silent client is told 421 4.4.2 and disconnected after idle_timeout."""
    gw, _ = relay(idle_timeout=1)
    sock = raw_session(gw.port)
    [reply] = read_replies(sock, 1)  # blocks until the gateway speaks
    assert reply.startswith(b"421 4.4.2")
    assert sock.recv(1) == b""
    [closed] = gw.audit.wait_for("session.closed")
    assert closed["reason"] == "idle timeout"


def test_command_sequence_errors(relay):
    """RCPT before MAIL, DATA before RCPT, MAIL before EHLO: 503 5.5.1 each."""
    gw, _ = relay()
    sock = raw_session(gw.port)
    sock.sendall(
        b"MAIL FROM:<a@example.com>\r\nEHLO x\r\nRCPT TO:<b@example.net>\r\n"
        b"MAIL FROM:<a@example.com>\r\nDATA\r\nMAIL FROM:<a@example.com>\r\nBDAT 10\r\n"
    )
    replies = read_replies(sock, 7)
    assert [r[:9] if r[4:5] != b"S" else r[:3] for r in replies] == [
        b"503 5.5.1",
        b"250",
        b"503 5.5.1",
        b"250 2.1.0",
        b"503 5.5.1",
        b"503 5.5.1",
        b"500 5.5.2",
    ]


@pytest.mark.parametrize(
    "command,code",
    [
        (b"MAIL FROM:<@relay.example:user@example.com>", b"501 5.1.3"),  # source route
        (b"MAIL FROM:<user@exa mple.com>", b"501"),
        (b"MAIL FROM:user@example.com", b"501 5.5.4"),  # no angle brackets
        (b"MAIL FROM:<us\xc3\xa9r@example.com>", b"553 5.6.7"),  # non-ASCII without SMTPUTF8
        (b"MAIL FROM:<a@example.com> FOO=BAR", b"555 5.5.4"),
    ],
)
def test_bad_sender_syntax(command, code, relay):
    """Malformed senders get a precise 5xx with an enhanced code."""
    gw, _ = relay()
    sock = raw_session(gw.port)
    sock.sendall(b"EHLO x\r\n" + command + b"\r\n")
    assert read_replies(sock, 2)[1].startswith(code)
