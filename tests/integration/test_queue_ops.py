"""The operator's queue controls over real sockets: ``queue.min_free`` (452 4.3.1 for queue mode
only) and ``mailgate queue hold/release`` against a running gateway and an aiosmtpd upstream.

The gateway runs in the test's reactor thread; the queue commands run as real processes. Waits
are on audit events and on the upstream's message count, never sleeps.
"""

from __future__ import annotations

import smtplib
import urllib.request

import pytest

from gateway.testing.configfile import write_toml
from gateway.testing.trace import without_trace
from tests.integration.queueing import Upstream, message, queue_command, queue_document, send


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    yield up
    up.down()


def mixed_document(upstream: Upstream, ca_file: str, spool: str, min_free: object) -> dict:
    """direct@example.net relayed cut-through, everything else queued; metrics on."""
    document = queue_document(upstream.table(ca_file), spool, min_free=min_free)
    document["rules"].insert(
        0,
        {"name": "direct", "action": "relay", "upstream": "up", "recipients": ["direct@*"]},
    )
    document["metrics"] = {"listen": "127.0.0.1:0"}
    return document


def rcpt(port: int, to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        return client.rcpt(to)


def test_below_min_free_queue_mail_gets_452_4_3_1_and_relay_mode_goes_on(
    upstream, start_gateway, ca, tmp_path
):
    """A floor above the test file system's free space: queue RCPT 452 4.3.1 with the reason in
    the audit; a relay-mode message is still relayed; the metric shows the spool's free bytes."""
    document = mixed_document(upstream, ca.ca_file, str(tmp_path / "spool"), "1000000TiB")
    gw = start_gateway(document)
    code, text = rcpt(gw.port, "ops@example.net")
    assert (code, text.split()[0]) == (452, b"4.3.1")
    assert b"low on disk space" in text
    refused = gw.audit.wait_for("message.result")[-1]
    assert refused["reason"].startswith("queue.min_free: ")
    assert refused["recipients"][0]["reply"].startswith("452 4.3.1")
    assert gw.audit.wait_for("queue.space_low")[0]["min_free"] == 1000000 * 1024**4
    assert send(gw.port, message(1), rcpts=["direct@example.net"])[0] == 250
    [relayed] = upstream.server.wait_for(1)
    assert without_trace(relayed.content) == message(1)
    port = gw.gateway.status_port.getHost().port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        scraped = answer.read().decode()
    free = [line for line in scraped.splitlines() if line.startswith("mailgate_queue_free_bytes ")]
    assert len(free) == 1 and float(free[0].split()[1]) > 0


def test_a_floor_of_zero_queues_as_before(upstream, start_gateway, ca, tmp_path):
    """min_free = 0: the floor is off; queued mail gets 250 and is delivered."""
    gw = start_gateway(mixed_document(upstream, ca.ca_file, str(tmp_path / "spool"), 0))
    code, text = send(gw.port, message(2))
    assert code == 250 and text.startswith(b"2.0.0 Queued as ")
    upstream.server.wait_for(1)
    assert gw.audit.named("queue.space_low") == []


def test_a_held_message_waits_until_released_then_is_delivered(
    upstream, start_gateway, ca, tmp_path
):
    """Two messages deferred together; one held: when the other is retried and delivered, the
    held one is not; `queue release` delivers it."""
    upstream.down()
    spool = str(tmp_path / "spool")
    document = queue_document(upstream.table(ca.ca_file), spool, min_backoff=1, max_backoff=1)
    gw = start_gateway(document)
    ids = []
    for number in (1, 2):
        code, text = send(gw.port, message(number))
        assert code == 250
        ids.append(text.split()[-1].decode())
    gw.audit.wait_for("message.deferred", 2)
    path = write_toml(document, str(tmp_path / "mailgate.toml"))
    held = queue_command(path, str(tmp_path), "hold", ids[0])
    assert held.returncode == 0, held.stderr
    gw.audit.wait_for("message.held")
    listed = queue_command(path, str(tmp_path), "list")
    assert f"{ids[0]}  hold" in listed.stdout
    server = upstream.back()
    [delivered] = server.wait_for(1)
    assert without_trace(delivered.content) == message(2)
    assert gw.audit.wait_for("message.result")[0]["queue_id"] == ids[1]
    released = queue_command(path, str(tmp_path), "release", ids[0])
    assert released.returncode == 0, released.stderr
    later = server.wait_for(2)
    assert without_trace(later[1].content) == message(1)
    assert gw.audit.wait_for("message.released")[0]["queue_id"] == ids[0]
    results = gw.audit.wait_for("message.result", 2)
    assert [r["outcome"] for r in results] == ["delivered", "delivered"]


def test_a_held_upstream_keeps_its_mail_until_released(upstream, start_gateway, ca, tmp_path):
    """hold --upstream up: a message queued for it is answered 250 but waits; released, delivered."""
    spool = str(tmp_path / "spool")
    document = queue_document(upstream.table(ca.ca_file), spool)
    gw = start_gateway(document)
    path = write_toml(document, str(tmp_path / "mailgate.toml"))
    assert queue_command(path, str(tmp_path), "hold", "--upstream", "up").returncode == 0
    gw.audit.wait_for("upstream.held")
    code, text = send(gw.port, message(3))
    assert code == 250
    queue_id = text.split()[-1].decode()
    listed = queue_command(path, str(tmp_path), "list")
    assert queue_id in listed.stdout and "held-upstream=up" in listed.stdout
    assert upstream.server.messages == []
    assert queue_command(path, str(tmp_path), "release", "--upstream", "up").returncode == 0
    [delivered] = upstream.server.wait_for(1)
    assert without_trace(delivered.content) == message(3)
    gw.audit.wait_for("upstream.released")
