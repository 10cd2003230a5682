"""Failover along a rule's upstream list, and the cool-down of a failed upstream."""

from __future__ import annotations

import smtplib
import socket

from tests.conftest import upstream_table

BODY = b"Subject: failover\r\n\r\nbody\r\n"


def routed(primary: dict, backup: dict) -> dict:
    return {
        "listener": {"listen": "127.0.0.1:0", "shutdown_grace": 2},
        "upstreams": {"primary": primary, "backup": backup},
        "rules": [{"name": "all", "action": "relay", "upstream": ["primary", "backup"]}],
    }


def send(port: int, rcpt: str = "ops@example.net") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("app@example.com")
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        return client.data(BODY)


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_primary_refusing_connections_fails_over(make_upstream, start_gateway, ca):
    """Primary not listening: the backup delivers and the audit names both and why."""
    backup = make_upstream()
    primary = upstream_table(backup, ca.ca_file, host="127.0.0.1", port=dead_port())
    gw = start_gateway(routed(primary, upstream_table(backup, ca.ca_file)))
    assert send(gw.port)[0] == 250
    backup.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    assert result["upstream"] == "backup"
    assert result["upstreams_tried"][0]["upstream"] == "primary"
    assert "cannot connect" in result["upstreams_tried"][0]["reason"]


def test_primary_failing_tls_fails_over_and_cools_down(make_upstream, start_gateway, ca):
    """Primary with a bad certificate: backup delivers; the next message skips the primary."""
    bad = make_upstream(cert=ca.issue("wrong-name", "other.example"))
    backup = make_upstream()
    gw = start_gateway(routed(upstream_table(bad, ca.ca_file), upstream_table(backup, ca.ca_file)))
    assert send(gw.port)[0] == 250
    assert bad.connections == 1
    assert send(gw.port)[0] == 250
    assert len(backup.wait_for(2)) == 2
    assert bad.connections == 1, "the primary was tried again during its cool-down"
    first = gw.audit.wait_for("message.result", 2)[0]
    assert "does not match host name" in first["upstreams_tried"][0]["reason"]


def test_primary_answering_421_fails_over(make_upstream, start_gateway, ca):
    """A 4xx from the primary at MAIL moves the transaction to the backup."""
    primary, backup = make_upstream(), make_upstream()
    primary.script.mail = "421 4.7.0 Too many connections, try later"
    gw = start_gateway(
        routed(upstream_table(primary, ca.ca_file), upstream_table(backup, ca.ca_file))
    )
    assert send(gw.port)[0] == 250
    assert len(backup.wait_for(1)) == 1 and primary.messages == []


def test_no_failover_on_550(make_upstream, start_gateway, ca):
    """A 5xx is final: the app gets it and the backup is not tried."""
    primary, backup = make_upstream(), make_upstream()
    primary.script.mail = "550 5.7.1 Sender not allowed"
    gw = start_gateway(
        routed(upstream_table(primary, ca.ca_file), upstream_table(backup, ca.ca_file))
    )
    assert send(gw.port) == (550, b"5.7.1 Sender not allowed")
    assert backup.connections == 0


def test_all_upstreams_down_gives_4xx(start_gateway, ca):
    """Every upstream unreachable: 451 4.4.1, and the audit lists each one tried."""

    class Gone:
        port, tls = 0, "starttls"

    primary = upstream_table(Gone, ca.ca_file, host="127.0.0.1", port=dead_port())
    backup = upstream_table(Gone, ca.ca_file, host="127.0.0.1", port=dead_port())
    gw = start_gateway(routed(primary, backup))
    code, text = send(gw.port)
    assert (code, text[:5]) == (451, b"4.4.1")
    [result] = gw.audit.wait_for("message.result")
    assert [t["upstream"] for t in result["upstreams_tried"]] == ["primary", "backup"]


def test_queued_message_fails_over_within_one_attempt(make_upstream, start_gateway, ca, tmp_path):
    """Queue mode: the primary unreachable, the same delivery attempt goes to the backup."""
    backup = make_upstream()
    primary = upstream_table(backup, ca.ca_file, host="127.0.0.1", port=dead_port())
    document = routed(primary, upstream_table(backup, ca.ca_file))
    document["rules"][0]["delivery"] = "queue"
    document["queue"] = {"path": str(tmp_path / "spool"), "min_backoff": 60}
    gw = start_gateway(document)
    assert send(gw.port)[0] == 250
    assert len(backup.wait_for(1)) == 1
    [attempt] = gw.audit.wait_for("delivery.attempt")
    assert attempt["upstream"] == "backup" and attempt["recipients"][0]["result"] == "delivered"
    assert attempt["upstreams_tried"][0]["upstream"] == "primary"


def test_queue_and_relay_share_the_upstream_pool(make_upstream, start_gateway, ca, tmp_path):
    """A relayed and a queued message to one upstream travel over one pooled connection."""
    upstream = make_upstream()
    table = upstream_table(upstream, ca.ca_file)
    document = {
        "listener": {"listen": "127.0.0.1:0", "shutdown_grace": 2},
        "queue": {"path": str(tmp_path / "spool"), "min_backoff": 60},
        "upstreams": {"up": table},
        "rules": [
            {
                "name": "queued",
                "recipients": ["*@queue.example"],
                "action": "relay",
                "upstream": "up",
                "delivery": "queue",
            },
            {"name": "relayed", "action": "relay", "upstream": "up"},
        ],
    }
    gw = start_gateway(document)
    assert send(gw.port, "ops@example.net")[0] == 250
    upstream.wait_for(1)
    assert send(gw.port, "ops@queue.example")[0] == 250
    assert len(upstream.wait_for(2)) == 2
    assert upstream.connections == 1
