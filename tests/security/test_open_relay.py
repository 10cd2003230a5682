"""Class 1, open relay and address tricks: policy decides on exactly what the upstream gets.

Two scripted upstreams stand behind two rules: ``*@example.net`` goes to
"net", ``*@example.com`` to "com"; nothing else is relayed. Their transcripts
hold the exact ``MAIL``/``RCPT`` lines mailgate sent (aiosmtpd is not used
here because it re-normalises quoted local parts before recording them), so
each trick address is shown to be either refused or passed on byte for byte
as policy evaluated it — never rerouted, never reinterpreted.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.conftest import upstream_table
from tests.security.scripted_upstream import ScriptedUpstream

CONTROL = "ops@example.net"


@pytest.fixture
def routes(scripted, start_gateway, ca):
    """A gateway with the two routes; returns (gateway, net upstream, com upstream)."""

    def make(senders: list[str] | None = None, **listener):
        net, com = scripted(), scripted()
        rules = [
            {"name": "net", "recipients": ["*@example.net"], "action": "relay", "upstream": "net"},
            {"name": "com", "recipients": ["*@example.com"], "action": "relay", "upstream": "com"},
        ]
        if senders:
            for rule in rules:
                rule["senders"] = senders
        document = {
            "listener": {
                "listen": "127.0.0.1:0",
                "hostname": "mailgate.test",
                "shutdown_grace": 2,
                **listener,
            },
            "upstreams": {
                "net": upstream_table(net, ca.ca_file),
                "com": upstream_table(com, ca.ca_file),
            },
            "rules": rules,
        }
        return start_gateway(document), net, com

    return make


def envelope_lines(gw: Any, upstream: ScriptedUpstream, verb: bytes) -> list[bytes]:
    """The exact MAIL or RCPT lines an upstream received, over all its connections (the
    gateway is stopped first: a session it kept in its pool ends with its QUIT)."""
    gw.stop()
    lines = []
    for connection in upstream.wait_closed(len(upstream.connections)):
        lines += [line for _, line in connection.lines if line.upper().startswith(verb)]
    return lines


# --- clients outside allowed_clients ----------------------------------------------------------

TRANSACTION = (
    b"EHLO app.test\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"
    b"Subject: relayed?\r\n\r\nbody\r\n.\r\nRSET\r\nHELO app.test\r\nMAIL FROM:<app@example.com>\r\n"
    b"RCPT TO:<ops@example.net>\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n"
)


@pytest.mark.parametrize("when", ["before-greeting", "after-greeting"])
def test_denied_client_pipelining_relays_nothing(when, routes):
    """Prevents a client outside allowed_clients relaying by pipelining a whole transaction."""
    gw, net, com = routes(allowed_clients=["10.0.0.0/8", "::ffff:127.0.0.2/128"])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        if when == "after-greeting":
            greeting = reader.readline()
        sock.sendall(TRANSACTION)
        if when == "before-greeting":
            greeting = reader.readline()
        replies = [line for line in reader if line[3:4] == b" "]  # until the gateway closes
    assert greeting.startswith(b"554 5.7.1")
    assert replies[-1].startswith(b"221")
    assert all(reply[:1] in (b"4", b"5") for reply in replies[:-1]), replies
    assert net.connections == [] and com.connections == []
    [denied] = gw.audit.wait_for("session.denied")
    assert denied["limit"] == "listener.allowed_clients"


# --- recipient tricks -----------------------------------------------------------------------

RELAYED_AS_WRITTEN = [
    "victim%example.com@example.net",  # percent hack: policy saw example.net, so does the upstream
    "evil.com!victim@example.net",  # bang path inside a local part
    "Victim@EXAMPLE.NET",  # mixed case: matched case-insensitively, passed on unchanged
    '"victim%evil.com"@example.net',  # quoted local part without '@'
]

REFUSED = [
    ("<victim@evil.com>@example.net", 501, b"5.5.4"),  # a path inside a path
    ('"victim@evil.com"@example.net', 501, b"5.1.3"),  # quoted local part containing '@'
    ("@example.net:victim@evil.com", 501, b"5.1.3"),  # source route
    ("@evil.com,@example.net:victim@example.net", 501, b"5.1.3"),  # source route, two hops
    ("victim@evil.com@example.net", 501, b"5.1.3"),  # two '@'
    ("victim@example.net.", 501, b"5.1.3"),  # trailing dot
    ("victim@example.com%example.net", 501, b"5.1.3"),  # percent hack in the domain
    ("example.net!victim", 501, b"5.1.3"),  # bang path, no domain
    ("victim@[example.net]", 501, b"5.1.3"),  # a name dressed as an address literal
    ("victim@[127.0.0.1]", 550, b"5.7.1"),  # IPv4 literal: valid, but no rule matches it
    ("victim@[IPv6:::1]", 550, b"5.7.1"),  # IPv6 literal: valid, but no rule matches it
    ("victim@example.net.evil.com", 550, b"5.7.1"),  # a suffix is not the domain
    ("victim@evil.com", 550, b"5.7.1"),  # the plain case
    ("victim@evil.com> <victim@example.net", 501, b"5.5.4"),  # a second path as a "parameter"
]


def converse(port: int, *commands: bytes) -> list[bytes]:
    """As an app over a raw socket (no client library rewriting addresses): EHLO, `commands`, QUIT
    pipelined; returns the final line of every reply, greeting first."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"EHLO app.test\r\n" + b"".join(c + b"\r\n" for c in commands) + b"QUIT\r\n")
        return [line.rstrip(b"\r\n") for line in reader if line[3:4] == b" "]


def send_recipients(port: int, *recipients: str, sender: str = "app@example.com") -> list[bytes]:
    """The replies to RCPT TO:<r> for each of `recipients`, exactly as written."""
    lines = [f"MAIL FROM:<{sender}>".encode()] + [f"RCPT TO:<{r}>".encode() for r in recipients]
    replies = converse(port, *lines)
    assert replies[2].startswith(b"250"), replies
    return replies[3:-1]


@pytest.mark.parametrize("recipient", RELAYED_AS_WRITTEN)
def test_accepted_trick_recipient_reaches_its_route_byte_for_byte(recipient, routes):
    """Prevents a recipient being rerouted or rewritten between the policy decision and the upstream."""
    gw, net, com = routes()
    assert send_recipients(gw.port, recipient)[0].startswith(b"250")
    assert envelope_lines(gw, net, b"RCPT") == [f"RCPT TO:<{recipient}>".encode()]
    assert com.connections == []
    [result] = gw.audit.wait_for("message.result")
    assert result["recipients"][0]["address"] == recipient and result["rules"] == ["net"]


@pytest.mark.parametrize("recipient,code,enhanced", REFUSED)
def test_trick_recipient_is_refused_and_never_relayed(recipient, code, enhanced, routes):
    """Prevents address tricks (percent hack, source route, quoted '@', literals...) escaping the rule."""
    gw, net, com = routes()
    trick, control = send_recipients(gw.port, recipient, CONTROL)
    assert trick.startswith(b"%d %s" % (code, enhanced)), trick
    assert control.startswith(b"250")
    assert envelope_lines(gw, net, b"RCPT") == [f"RCPT TO:<{CONTROL}>".encode()]
    assert com.connections == []


@pytest.mark.parametrize(
    "argument",
    [
        b"RCPT TO:<victim@evil.com\x00@example.net>",
        b"RCPT TO:<victim@evil.com\r@example.net>",
        b"RCPT TO:<victim@evil.com\n@example.net>",
        b"RCPT TO:<victim@example.net>\x00<victim@evil.com>",
    ],
)
def test_nul_cr_lf_inside_rcpt_is_refused(argument, routes):
    """Prevents NUL, bare CR or bare LF smuggling a second address past the parser."""
    gw, net, com = routes()
    replies = converse(
        gw.port, b"MAIL FROM:<app@example.com>", argument, f"RCPT TO:<{CONTROL}>".encode()
    )
    refusals = replies[3:-2]  # after greeting, EHLO, MAIL; before the control RCPT and QUIT
    assert refusals and all(r.startswith(b"500 5.5.2") for r in refusals), replies
    assert replies[-2].startswith(b"250") and replies[-1].startswith(b"221")
    assert envelope_lines(gw, net, b"RCPT") == [f"RCPT TO:<{CONTROL}>".encode()]
    assert com.connections == []


# --- sender tricks ----------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "app%evil.com@app.example", "App@APP.example"])
def test_accepted_sender_reaches_the_upstream_byte_for_byte(sender, routes):
    """Prevents the envelope sender (including the null sender <>) being rewritten on the way up."""
    gw, net, _ = routes()
    assert send_recipients(gw.port, CONTROL, sender=sender)[0].startswith(b"250")
    assert envelope_lines(gw, net, b"MAIL") == [f"MAIL FROM:<{sender}>".encode()]
    [result] = gw.audit.wait_for("message.result")
    assert result["sender"] == sender


@pytest.mark.parametrize(
    "sender", ["", "evil@evil.com", "app@app.example.evil.com", "app%app.example@evil.com"]
)
def test_sender_outside_the_rule_is_refused_at_rcpt(sender, routes):
    """Prevents a sender-restricted rule relaying for the null sender or a look-alike sender."""
    gw, net, com = routes(senders=["*@app.example"])
    replies = converse(gw.port, f"MAIL FROM:<{sender}>".encode(), f"RCPT TO:<{CONTROL}>".encode())
    assert replies[2].startswith(b"250 2.1.0") and replies[3].startswith(b"550 5.7.1"), replies
    assert net.connections == [] and com.connections == []


@pytest.mark.parametrize(
    "command,reply",
    [
        (b"MAIL FROM:", b"501 5.5.4"),  # empty, no brackets
        (b"MAIL FROM:<@evil.com:app@app.example>", b"501 5.1.3"),  # source route
        (b'MAIL FROM:<"app@app.example"@evil.com>', b"501 5.1.7"),  # quoted '@'
        (b"MAIL FROM:<app@evil.com%app.example>", b"501 5.1.7"),  # percent hack in the domain
        (b"MAIL FROM:<app@app.example.>", b"501 5.1.7"),  # trailing dot
        (b"MAIL FROM:<app@app.example\x00evil>", b"500 5.5.2"),  # NUL
        (b"MAIL FROM:<app@app.example\revil>", b"500 5.5.2"),  # bare CR
    ],
)
def test_malformed_sender_is_refused(command, reply, routes):
    """Prevents a malformed or routed sender being accepted (and later reinterpreted upstream)."""
    gw, net, _ = routes(senders=["*@app.example"])
    replies = converse(gw.port, command)
    assert replies[2].startswith(reply), replies
    assert net.connections == []
