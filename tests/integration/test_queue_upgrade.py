"""A spool written by the format 1 code (before issue 13) after the upgrade: it drains, and the
`mailgate queue` commands read it. The spool is tests/queue/fixtures/spool-v1, made at 9cfb924."""

from __future__ import annotations

import os
import shutil

import pytest

from gateway.cli import main as cli
from gateway.testing.configfile import write_toml
from gateway.testing.trace import without_trace
from tests.integration.queueing import Upstream, queue_document

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "queue", "fixtures", "spool-v1")
ACTIVE_1, DEFERRED_2, PARTLY_3, DEAD_4, IN_FLIGHT_5 = (
    f"0005f2f3a0b1c2d3e4f5000{n}" for n in range(1, 6)
)


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    yield up
    up.down()


@pytest.fixture
def old_spool(tmp_path) -> str:
    path = str(tmp_path / "spool")
    shutil.copytree(FIXTURE, path)
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
    return path


def body(n: int) -> bytes:
    return (
        f"From: app@example.com\r\nTo: ops@example.net\r\nSubject: v1 {n}\r\n"
        f"Message-ID: <v1-{n}@example.com>\r\n\r\n.dot line {n}\r\nbody {n}\r\n"
    ).encode()


def test_a_format_1_spool_drains_after_the_upgrade(upstream, start_gateway, ca, old_spool):
    """Every queued message of the old spool is delivered once; a recipient it had delivered is
    not sent again; the one caught in the duplicate window is logged and sent; the dead letter stays."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), old_spool))  # ages do not matter:
    # expiry applies only to what a failed round leaves pending
    received = upstream.server.wait_for(4)
    assert sorted(without_trace(m.content) for m in received) == [body(n) for n in (1, 2, 3, 5)]
    partly = [m for m in received if b"Subject: v1 3" in m.content]
    assert [m.recipients for m in partly] == [["ops@example.net"]]
    results = gw.audit.wait_for("message.result", 4)
    assert {r["queue_id"]: r["outcome"] for r in results} == {
        ACTIVE_1: "delivered",
        DEFERRED_2: "delivered",
        PARTLY_3: "delivered",
        IN_FLIGHT_5: "delivered",
    }
    for result in results:  # format 1 has no client TLS fields: null, as for a plain session
        assert result["client_tls_version"] is None and result["client_tls_cipher"] is None
        assert "client_cert_sha256" not in result
    [risk] = gw.audit.named("delivery.duplicate_risk")
    assert risk["queue_id"] == IN_FLIGHT_5
    assert os.listdir(os.path.join(old_spool, "dead")) == [DEAD_4]
    assert len(upstream.server.messages) == 4


def test_a_format_2_envelope_from_before_the_client_tls_fields_drains(
    upstream, start_gateway, ca, tmp_path
):
    """A format 2 journal line written before issue 14 added client_tls_version,
    client_tls_cipher and client_cert_sha256 is valid: delivered, its result has them null."""
    import json

    from gateway.queue.envelope import CLIENT_TLS_FIELDS
    from gateway.queue.spool import Envelope, RecipientState, Spool, new_id
    from gateway.queue.writer import SpoolWriter

    path = str(tmp_path / "spool")
    spool = Spool(path)
    spool.create()
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(body(6))
    envelope = Envelope(
        queue_id, "app@example.com", [RecipientState("ops@example.net", "up", "all")], 1000.0
    )
    writer.commit(envelope)
    record = json.loads(envelope.to_record())
    for name in CLIENT_TLS_FIELDS:
        del record[name]
    with open(os.path.join(spool.folder("active", queue_id), "envelope.json"), "w") as handle:
        handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), path))
    [received] = upstream.server.wait_for(1)
    assert without_trace(received.content) == body(6)
    result = gw.audit.wait_until("message.result", queue_id=queue_id)
    assert result["outcome"] == "delivered" and result["client_tls_version"] is None
    assert result["client_tls_cipher"] is None and "client_cert_sha256" not in result


def test_queue_commands_read_a_format_1_spool(upstream, ca, old_spool, tmp_path, capsys):
    """`queue list`, `show`, `dead` on the old spool as it is; `requeue` converts the dead letter."""
    config = str(tmp_path / "operator.toml")
    write_toml(queue_document(upstream.table(ca.ca_file), old_spool), config)
    assert cli.main(["queue", "list", "--config", config]) == 0
    listed = capsys.readouterr().out
    assert all(i in listed for i in (ACTIVE_1, DEFERRED_2, PARTLY_3, IN_FLIGHT_5))
    assert "unreadable" not in listed
    assert cli.main(["queue", "show", PARTLY_3, "--config", config]) == 0
    shown = capsys.readouterr().out
    assert "done@example.net" in shown and "delivered" in shown
    assert cli.main(["queue", "dead", "--config", config]) == 0
    assert "gone@example.net" in capsys.readouterr().out
    assert cli.main(["queue", "requeue", DEAD_4, "--config", config]) == 0
    path = os.path.join(old_spool, "active", DEAD_4, "envelope.json")
    with open(path, "rb") as handle:
        assert handle.read().startswith(b'{"version":2,')
