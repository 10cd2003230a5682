"""`mailgate queue drain` against a running gateway: 451 4.3.2 for queue mail, spool delivered,
/readyz not ready, `--wait` returns once the spool is empty, `resume` undoes it.

The gateway runs in the test's reactor thread; the queue commands run as real processes
(`mailgate queue ...`), as an operator or a preStop hook runs them. Waits are on audit events.
"""

from __future__ import annotations

import os
import smtplib
import urllib.error
import urllib.request

import pytest

from gateway.testing.configfile import write_toml
from gateway.testing.trace import without_trace
from tests.integration.queueing import (
    Upstream,
    message,
    queue_command,
    queue_document,
    send,
)


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    yield up
    up.down()


def drain_document(upstream: Upstream, ca_file: str, spool: str, **queue) -> dict:
    document = queue_document(upstream.table(ca_file), spool, **queue)
    document["metrics"] = {"listen": "127.0.0.1:0"}
    return document


def config_file(document: dict, tmp_path) -> str:
    return write_toml(document, str(tmp_path / "mailgate.toml"))


def readyz(gw) -> int:
    port = gw.gateway.status_port.getHost().port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def rcpt_reply(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        return client.rcpt("ops@example.net")


def test_draining_gateway_refuses_queue_mail_with_451_4_3_2(upstream, start_gateway, ca, tmp_path):
    """Once the drain is taken up, a queue-mode RCPT gets 451 4.3.2 and nothing is spooled."""
    document = drain_document(upstream, ca.ca_file, str(tmp_path / "spool"))
    gw = start_gateway(document)
    assert rcpt_reply(gw.port)[0] == 250
    drained = queue_command(config_file(document, tmp_path), str(tmp_path), "drain")
    assert drained.returncode == 0, drained.stderr
    gw.audit.wait_for("queue.drain_started")
    code, text = rcpt_reply(gw.port)
    assert (code, text.split()[0]) == (451, b"4.3.2")
    assert os.listdir(tmp_path / "spool" / "incoming") == []
    refused = gw.audit.wait_for("message.result", 2)[-1]["recipients"][0]
    assert refused["result"] == "deferred" and refused["reply"].startswith("451 4.3.2")


def test_readyz_is_not_ready_while_draining_and_ready_after_resume(
    upstream, start_gateway, ca, tmp_path
):
    """/readyz answers 503 from the drain's start, and 200 again once `queue resume` is taken up."""
    document = drain_document(upstream, ca.ca_file, str(tmp_path / "spool"))
    gw = start_gateway(document)
    path = config_file(document, tmp_path)
    assert readyz(gw) == 200
    assert queue_command(path, str(tmp_path), "drain").returncode == 0
    gw.audit.wait_for("queue.drain_started")
    assert readyz(gw) == 503
    assert queue_command(path, str(tmp_path), "resume").returncode == 0
    gw.audit.wait_for("queue.drain_cancelled")
    assert readyz(gw) == 200
    assert send(gw.port, message(1))[0] == 250


def test_drain_wait_returns_once_the_deferred_spool_is_delivered(
    upstream, start_gateway, ca, tmp_path
):
    """Deferred mail (backoff an hour away) is retried at the drain's start; --wait exits 0 when empty."""
    upstream.down()
    spool = str(tmp_path / "spool")
    document = drain_document(upstream, ca.ca_file, spool, min_backoff=3600, max_backoff=3600)
    gw = start_gateway(document)
    for number in range(2):
        assert send(gw.port, message(number))[0] == 250
    gw.audit.wait_for("message.deferred", 2)
    server = upstream.back()
    waited = queue_command(
        config_file(document, tmp_path), str(tmp_path), "drain", "--wait", "--timeout", "60"
    )
    assert waited.returncode == 0, waited.stderr
    assert "drained" in waited.stdout
    assert len(server.messages) == 2
    assert os.listdir(os.path.join(spool, "active")) == os.listdir(os.path.join(spool, "deferred"))
    assert os.listdir(os.path.join(spool, "deferred")) == []
    gw.audit.wait_for("queue.drained")


def test_drain_wait_times_out_saying_what_is_left(upstream, start_gateway, ca, tmp_path):
    """With the upstream still down, --wait --timeout exits 1 and names the message still deferred."""
    upstream.down()
    spool = str(tmp_path / "spool")
    document = drain_document(upstream, ca.ca_file, spool, min_backoff=3600, max_backoff=3600)
    gw = start_gateway(document)
    assert send(gw.port, message(1))[0] == 250
    gw.audit.wait_for("message.deferred")
    waited = queue_command(
        config_file(document, tmp_path), str(tmp_path), "drain", "--wait", "--timeout", "3"
    )
    assert waited.returncode == 1
    assert "not drained after 3 s: 1 message(s) to deliver" in waited.stderr
    assert gw.audit.named("queue.drained") == []


def test_queue_status_and_list_show_the_drain(upstream, start_gateway, ca, tmp_path):
    """`queue status` and `queue list` say the spool drains, and that the gateway took it up."""
    document = drain_document(upstream, ca.ca_file, str(tmp_path / "spool"))
    gw = start_gateway(document)
    path = config_file(document, tmp_path)
    assert "state: accepting queued mail" in queue_command(path, str(tmp_path), "status").stdout
    queue_command(path, str(tmp_path), "drain")
    gw.audit.wait_for("queue.drain_started")
    status = queue_command(path, str(tmp_path), "status")
    assert "state: draining since " in status.stdout
    assert "(taken up by the gateway)" in status.stdout
    assert "draining since" in queue_command(path, str(tmp_path), "list").stderr


def test_drain_without_a_spool_has_nothing_to_wait_for(upstream, ca, tmp_path):
    """A relay-only instance (no spool at queue.path): drain --wait exits 0 at once, saying so."""
    document = drain_document(upstream, ca.ca_file, str(tmp_path / "never-created"))
    waited = queue_command(config_file(document, tmp_path), str(tmp_path), "drain", "--wait")
    assert waited.returncode == 0 and "nothing to drain" in waited.stdout
    assert not (tmp_path / "never-created").exists()


def test_relay_mode_keeps_working_while_draining(upstream, start_gateway, ca, tmp_path):
    """While draining, a relay-mode recipient is still relayed (250) and reaches the upstream."""
    document = drain_document(upstream, ca.ca_file, str(tmp_path / "spool"))
    relay_rule = {"name": "direct", "recipients": ["*@relay.example"], "action": "relay"}
    document["rules"].insert(0, dict(relay_rule, upstream="up"))
    gw = start_gateway(document)
    assert queue_command(config_file(document, tmp_path), str(tmp_path), "drain").returncode == 0
    gw.audit.wait_for("queue.drain_started")
    assert rcpt_reply(gw.port)[0] == 451  # the queue rule's recipient
    code, _ = send(gw.port, message(1, to="ops@relay.example"), rcpts=["ops@relay.example"])
    assert code == 250
    [relayed] = upstream.server.wait_for(1)
    assert without_trace(relayed.content) == message(1, to="ops@relay.example")
