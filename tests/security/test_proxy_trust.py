"""Issue 12 item 1: a PROXY header is believed only from a balancer in ``listener.proxy_trusted``.

The class: whatever a peer outside proxy_trusted sends (a v1 or v2 header, TCP4 or TCP6,
an IPv4-mapped address, or no header at all) it is refused with ``421 4.7.0``, audited as
its own address and counted as itself; behind a trusted balancer the per-client limit
counts the client the header names, however its address is spelled.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct

import pytest

from gateway.cli import main as cli
from gateway.testing.configfile import to_toml
from tests.conftest import relay_all, upstream_table

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CLAIMED = ["10.20.5.7", "10.20.5.8", "10.20.5.9", "2001:db8::7", "::ffff:10.20.5.10", "10.20.5.11"]


def v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    target = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {target} {port} 2525\r\n".encode()


def v2(source: str, port: int = 40000) -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        family, target = 0x11, ipaddress.ip_address("127.0.0.1")
    else:
        family, target = 0x21, ipaddress.ip_address("::1")
    body = address.packed + target.packed + struct.pack("!HH", port, 2525)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


# Six sessions, six claimed clients, every header form.
HEADERS = [
    v1(CLAIMED[0]),
    v2(CLAIMED[1]),
    v1(CLAIMED[2]) + b"EHLO pipelined.test\r\n",
    v1(CLAIMED[3]),
    v1(CLAIMED[4]),  # TCP6 with an IPv4-mapped address
    v2("::ffff:" + CLAIMED[5]),
]


def document(upstream, ca_file: str, trusted: list[str], **listener) -> dict:
    """Every claimed client is allowed and has its own `clients` rule: a believed lie relays."""
    doc = relay_all(
        upstream_table(upstream, ca_file),
        proxy_protocol=True,
        proxy_trusted=trusted,
        allowed_clients=["10.20.0.0/16", "2001:db8::/32"],
        **listener,
    )
    doc["rules"][0]["clients"] = ["10.20.0.0/16", "2001:db8::/32"]
    return doc


def exchange(
    port: int, header: bytes, command: bytes = b"EHLO app.test\r\n"
) -> tuple[bytes, bytes]:
    """Connect from 127.0.0.1, read the greeting, send `header` + `command`; the greeting and the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        stream = sock.makefile("rb")
        greeting = stream.readline()
        sock.sendall(header + command)
        line = stream.readline()
        while line[3:4] == b"-":
            line = stream.readline()
        return greeting, line


def test_headers_from_an_untrusted_peer_are_all_refused(make_upstream, start_gateway, ca):
    """Six sessions claiming six allowed clients (v1, v2, TCP6, mapped) from 127.0.0.1: all 421 4.7.0."""
    upstream = make_upstream()
    gw = start_gateway(
        document(upstream, ca.ca_file, ["192.0.2.1/32"], max_connections_per_client=100)
    )
    for header in HEADERS:
        greeting, reply = exchange(
            gw.port, header, b"MAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\n"
        )
        assert greeting.startswith(b"220 ")
        assert reply.startswith(b"421 4.7.0 PROXY protocol header not accepted"), reply
    gw.audit.wait_for("session.closed", len(HEADERS))
    opened = gw.audit.named("session.opened")
    assert [e["client_ip"] for e in opened] == ["127.0.0.1"] * len(HEADERS)
    assert not any(e["allowed"] for e in opened)
    assert {e["proxy_header"] for e in opened} == {"untrusted"}
    denied = gw.audit.named("session.denied")
    assert [e["limit"] for e in denied] == ["listener.proxy_trusted"] * len(HEADERS)
    assert all(e["reply"].startswith("421 4.7.0") for e in denied)
    assert gw.audit.named("message.result") == [] and upstream.messages == []
    assert "10.20.5" not in gw.audit.text and "2001:db8" not in gw.audit.text


def test_plain_smtp_from_an_untrusted_peer_is_refused(make_upstream, start_gateway, ca):
    """No header at all from a peer outside proxy_trusted: the same 421 4.7.0, audited."""
    gw = start_gateway(document(make_upstream(), ca.ca_file, ["192.0.2.1/32"]))
    _, reply = exchange(gw.port, b"")
    assert reply.startswith(b"421 4.7.0 PROXY protocol header not accepted")
    [denied] = gw.audit.wait_for("session.denied")
    assert denied["client_ip"] == "127.0.0.1" and denied["limit"] == "listener.proxy_trusted"


def test_untrusted_peer_is_counted_as_itself_at_connect(make_upstream, start_gateway, ca):
    """Claims of other clients do not lift an untrusted peer's own max_connections_per_client."""
    gw = start_gateway(
        document(make_upstream(), ca.ca_file, ["192.0.2.1/32"], max_connections_per_client=2)
    )
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(2)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220 ")
        for header in HEADERS:
            greeting, _ = exchange(gw.port, header)
            assert greeting.startswith(b"421 4.7.0 Too many connections from your address")
    finally:
        for sock in held:
            sock.close()
    refused = gw.audit.wait_for("connection.refused", len(HEADERS))
    assert {e["client_ip"] for e in refused} == {"127.0.0.1"}


def test_per_client_limit_counts_the_named_client_behind_a_trusted_balancer(
    make_upstream, start_gateway, ca
):
    """Behind 127.0.0.1 (trusted): one client, spelled as TCP4, v2, TCP6-mapped, is one client."""
    gw = start_gateway(
        document(make_upstream(), ca.ca_file, ["127.0.0.1/32"], max_connections_per_client=1)
    )
    first = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    try:
        stream = first.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        first.sendall(v1("10.20.5.7") + b"HELO app.test\r\n")
        assert stream.readline().startswith(b"250 ")
        for again in (
            v1("10.20.5.7", 40001),
            v2("10.20.5.7", 40002),
            v1("::ffff:10.20.5.7", 40003),
            v2("::ffff:10.20.5.7", 40004),
            v1("::FFFF:0A14:0507", 40005),
        ):
            _, reply = exchange(gw.port, again)
            assert reply.startswith(b"421 4.7.0 Too many connections from your address"), again
        _, other = exchange(gw.port, v2("10.20.5.8"), b"HELO other.test\r\n")
        assert other.startswith(b"250 ")  # another client behind the same balancer
    finally:
        first.close()
    refused = gw.audit.wait_for("connection.refused", 5)
    assert {e["client_ip"] for e in refused} == {"10.20.5.7"}
    assert {e["limit"] for e in refused} == {"listener.max_connections_per_client"}


def test_idle_connections_behind_a_trusted_balancer_count_for_their_client(
    make_upstream, start_gateway, ca
):
    """A header alone (no command yet) counts its client: idle connections cannot pile up."""
    gw = start_gateway(
        document(make_upstream(), ca.ca_file, ["127.0.0.1/32"], max_connections_per_client=1)
    )
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(2)]
    try:
        streams = [sock.makefile("rb") for sock in socks]
        for sock, stream, port in zip(socks, streams, (40001, 40002), strict=True):
            assert stream.readline().startswith(b"220 ")
            sock.sendall(v2("10.20.5.7", port))  # a header, and then nothing
        readable, _, _ = select.select(socks, [], [], 30)
        assert len(readable) == 1  # one of the two is refused without sending a command
        refused = streams[socks.index(readable[0])].readline()
        assert refused.startswith(b"421 4.7.0 Too many connections from your address")
    finally:
        for sock in socks:
            sock.close()
    [event] = gw.audit.wait_for("connection.refused")
    assert event["client_ip"] == "10.20.5.7"


@pytest.mark.parametrize("trusted", [None, []], ids=["missing", "empty"])
def test_check_refuses_proxy_protocol_without_proxy_trusted(trusted, tmp_path, capsys):
    """`mailgate check` refuses proxy_protocol = true without the balancers, naming the key."""
    listener = {"listen": "127.0.0.1:2525", "proxy_protocol": True}
    if trusted is not None:
        listener["proxy_trusted"] = trusted
    doc = {"listener": listener, "rules": [{"name": "r", "action": "reject"}]}
    config = tmp_path / "mailgate.toml"
    config.write_text(to_toml(doc))
    assert cli.main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "listener.proxy_trusted" in err and "listener.proxy_protocol = true" in err
