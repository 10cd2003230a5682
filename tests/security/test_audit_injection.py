"""Class 8, audit injection: whatever an app or an upstream writes, the audit stays one JSON object per line.

Values an attacker controls reach the audit from the HELO name, the envelope
addresses (as far as the RFC 5321 grammar lets characters through), the
Message-ID header and the upstream's reply text. Each test puts CR/LF look-
alikes (U+2028, NEL), terminal escape sequences, quotes, backslashes and a
forged JSON fragment there, then checks the raw audit text: every line is one
JSON object, only printable ASCII (so ``tail -f`` on a terminal runs no escape
sequence), no forged event, and the value read back equals the value sent.
"""

from __future__ import annotations

import json
import smtplib
import socket

import pytest

from tests.conftest import upstream_table

FORGED = b'","event":"session.closed","forged":"'
HOSTILE = {
    "ansi-colour": b"app\x1b[31mRED\x1b[0m.test",
    "clear-screen": b"\x1b[2J\x1b[Happ.test",
    "osc-title": b"\x1b]0;pwned\x07app.test",
    "c1-csi": b"app\xc2\x9b31m.test",
    "line-separators": b"app\xe2\x80\xa8next\xe2\x80\xa9para\xc2\x85nel",
    "quotes-backslashes": b'app"\\\'.test\\"',
    "forged-json": b"app" + FORGED,
    "other-controls": b"a\tb\x0bc\x0cd\x08e\x7ff",
    "invalid-utf8": b"app\xff\xfe\xc0.test",
}


def assert_one_clean_object_per_line(lines: list[str]) -> list[dict]:
    """Every audit line is one JSON object of printable ASCII; no forged event."""
    events = []
    for line in lines:
        assert all(" " <= char <= "~" for char in line), repr(line)
        event = json.loads(line)
        assert isinstance(event, dict) and isinstance(event["event"], str)
        assert "forged" not in event
        events.append(event)
    return events


@pytest.fixture
def gateway(make_upstream, start_gateway, ca):
    """A gateway relaying *@example.net to an aiosmtpd upstream; returns (gateway, upstream)."""
    upstream = make_upstream()
    document = {
        "listener": {"listen": "127.0.0.1:0", "hostname": "mailgate.test", "shutdown_grace": 2},
        "upstreams": {"up": upstream_table(upstream, ca.ca_file)},
        "rules": [
            {"name": "net", "recipients": ["*@example.net"], "action": "relay", "upstream": "up"}
        ],
    }
    return start_gateway(document), upstream


def converse(port: int, *commands: bytes) -> list[bytes]:
    """Raw commands pipelined, then QUIT; the last line of every reply, greeting first."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"".join(c + b"\r\n" for c in commands) + b"QUIT\r\n")
        return [line.rstrip(b"\r\n") for line in reader if line[3:4] == b" "]


@pytest.mark.parametrize("helo", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_helo_is_escaped_in_the_audit(helo, gateway):
    """Prevents a HELO name from breaking an audit record, forging an event or driving a terminal."""
    gw, _ = gateway
    replies = converse(
        gw.port, b"EHLO " + helo, b"MAIL FROM:<app@example.com>", b"RCPT TO:<x@nowhere.example>"
    )
    assert [r[:3] for r in replies] == [b"220", b"250", b"250", b"550", b"221"]
    gw.audit.wait_for("session.closed")
    events = assert_one_clean_object_per_line(gw.audit.lines)
    [result] = [e for e in events if e["event"] == "message.result"]
    assert result["helo"] == helo.decode("utf-8", "replace")


ADDRESSES = {
    "escaped-quote-backslash": '"a\\"b\\\\c"@example.net',
    "forged-json": '"\\",\\"event\\":\\"session.closed\\",\\"forged\\":\\""@example.net',
    "specials": "{a}|b~'c`d#$%&*+=?^/@example.net",
}


@pytest.mark.parametrize("address", ADDRESSES.values(), ids=ADDRESSES.keys())
def test_hostile_addresses_are_escaped_in_the_audit(address, gateway):
    """Prevents quotes and backslashes in a (grammatical) address from breaking or forging audit records."""
    gw, _ = gateway
    local = address.rpartition("@")[0]
    sender, recipient = f"{local}@example.com", f"{local}@nowhere.example"
    replies = converse(
        gw.port,
        b"EHLO app.test",
        f"MAIL FROM:<{sender}>".encode(),
        f"RCPT TO:<{recipient}>".encode(),
    )
    assert [r[:3] for r in replies] == [b"220", b"250", b"250", b"550", b"221"], replies
    gw.audit.wait_for("session.closed")
    events = assert_one_clean_object_per_line(gw.audit.lines)
    [result] = [e for e in events if e["event"] == "message.result"]
    assert result["sender"] == sender
    assert result["recipients"][0]["address"] == recipient


MESSAGE_IDS = {
    "ansi": b"<\x1b[31mid\x1b[0m@example.com>",
    "bell-backspace-vt-ff": b"<a\x07b\x08c\x0bd\x0ce@example.com>",
    "line-separators": b"<a\xe2\x80\xa8b\xc2\x85c@example.com>",
    "quotes-backslashes": b"<a\"b\\c'd@example.com>",
    "forged-json": b"<id" + FORGED + b"@example.com>",
    "invalid-utf8": b"<\xff\xfe@example.com>",
}


@pytest.mark.parametrize("message_id", MESSAGE_IDS.values(), ids=MESSAGE_IDS.keys())
def test_hostile_message_id_is_escaped_in_the_audit(message_id, gateway):
    """Prevents control characters in a Message-ID header from breaking or forging audit records."""
    gw, upstream = gateway
    body = b"From: app@example.com\r\nMessage-ID: " + message_id + b"\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        assert client.sendmail("app@example.com", ["ops@example.net"], body) == {}
    upstream.wait_for(1)
    gw.audit.wait_for("session.closed")
    events = assert_one_clean_object_per_line(gw.audit.lines)
    [result] = [e for e in events if e["event"] == "message.result"]
    assert result["outcome"] == "relayed"
    assert result["message_id"] == message_id.decode("utf-8", "replace")


def test_hostile_upstream_reply_is_escaped_in_the_audit(scripted, start_gateway, ca):
    """Prevents an upstream's reply text (escapes, quotes, forged JSON) breaking or forging audit records."""
    text = b'5.1.1 \x1b[2J\x1b]0;pwned\x07 "quoted" \\back\xe2\x80\xa8' + FORGED
    upstream = scripted(rcpt_reply=b"550 " + text + b"\r\n")
    document = {
        "listener": {"listen": "127.0.0.1:0", "hostname": "mailgate.test", "shutdown_grace": 2},
        "upstreams": {"up": upstream_table(upstream, ca.ca_file)},
        "rules": [{"name": "all", "action": "relay", "upstream": "up"}],
    }
    gw = start_gateway(document)
    replies = converse(
        gw.port, b"EHLO app.test", b"MAIL FROM:<app@example.com>", b"RCPT TO:<ops@example.net>"
    )
    assert replies[3].startswith(b"550 5.1.1")
    gw.audit.wait_for("session.closed")
    events = assert_one_clean_object_per_line(gw.audit.lines)
    [result] = [e for e in events if e["event"] == "message.result"]
    assert result["upstream_reply"] == text[6:].decode("utf-8", "replace")
