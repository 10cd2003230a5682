"""What the audit says of a queued delivery's upstream, over real sockets and real TLS.

Queue delivery runs on the same outbound transaction as relay, so its records carry the same
upstream fields: regressions for the copies that drifted (no TLS/AUTH fields in queue mode,
so `mailgate audit summary` filed every queued delivery under "(no upstream session)").
"""

from __future__ import annotations

import pytest

from gateway.cli.main import main
from tests.conftest import USER
from tests.integration.queueing import Upstream, message, queue_document, send


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    yield up
    up.down()


def test_queued_result_and_attempt_name_the_upstream_session(upstream, start_gateway, ca, tmp_path):
    """message.result and delivery.attempt of a queued message carry TLS, AUTH and the reply."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    assert send(gw.port, message(1))[0] == 250
    [received] = upstream.server.wait_for(1)
    [result] = gw.audit.wait_for("message.result")
    [attempt] = gw.audit.named("delivery.attempt")
    for record in (result, attempt):
        assert record["upstream"] == "up" and record["upstream_port"] == upstream.port
        assert record["tls_version"] == received.tls_version and record["tls_cipher"]
        assert len(record["peer_cert_sha256"]) == 64
        assert record["auth_user"] == USER
        assert record["upstream_code"] == 250


def test_summary_files_a_queued_delivery_under_its_tls_version(
    upstream, start_gateway, ca, tmp_path, capsys
):
    """`mailgate audit summary` counts a queued delivery by its upstream TLS version."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    assert send(gw.port, message(1))[0] == 250
    [result] = gw.audit.wait_for("message.result")
    gw.stop()
    log = tmp_path / "audit.jsonl"
    log.write_text(gw.audit.text + "\n")
    assert main(["audit", "summary", str(log)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    tls = lines[lines.index("by TLS version") + 1 : lines.index("", lines.index("by TLS version"))]
    assert [line.split()[0] for line in tls] == [result["tls_version"]]
    assert "(no upstream session)" not in out
