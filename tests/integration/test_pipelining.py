"""RFC 2920 toward the upstream over real sockets: smtplib -> mailgate -> a PIPELINING upstream.

Queue delivery sends MAIL, every RCPT and DATA in one write (and a reused session's RSET in
front of them); relay cut-through pipelines RSET, MAIL and its first RCPT. The upstream notes
the read each command came in (`PipeliningUpstream`), so "one write" is what it saw.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.testing.pki import ServerCert
from tests.conftest import relay_all, upstream_table
from tests.integration.pipelining_upstream import PipeliningUpstream, Script
from tests.integration.queueing import message, queue_document, send

FLIGHT = [b"MAIL", b"RCPT", b"RCPT", b"DATA"]


@pytest.fixture
def upstreams(server_cert: ServerCert) -> Iterator[Any]:
    started: list[PipeliningUpstream] = []

    def make(**script: Any) -> PipeliningUpstream:
        server = PipeliningUpstream(server_cert.server_context(), Script(**script))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def table(server: PipeliningUpstream, ca_file: str) -> dict[str, Any]:
    return upstream_table(SimpleNamespace(port=server.port, tls="implicit"), ca_file)  # type: ignore[arg-type]


def queued(server: PipeliningUpstream, ca_file: str, spool: str) -> dict[str, Any]:
    return queue_document(table(server, ca_file), spool)


def attempt(gw: Any, n: int = 1) -> dict[str, Any]:
    return gw.audit.wait_for("delivery.attempt", n)[n - 1]


def says(record: dict[str, Any], code: int) -> bool:
    """Whether any field of `record` carries a reply with `code` (a value starting "554 ",
    or the upstream's code); hashes and ids may contain the digits by chance."""
    text = json.dumps(record, separators=(",", ":"))
    return f'"{code} ' in text or f'"upstream_code":{code}' in text


def results(record: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {r["address"]: (r["result"], r["reply"]) for r in record["recipients"]}


def test_queue_delivery_sends_mail_every_rcpt_and_data_in_one_write(
    upstreams, start_gateway, ca, tmp_path
):
    """PIPELINING offered: MAIL, both RCPTs and DATA arrive in one read; delivered once."""
    up = upstreams()
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    assert send(gw.port, message(1), ["a@example.net", "b@example.net"])[0] == 250
    [received] = up.wait_messages(1)
    assert received.recipients == ["a@example.net", "b@example.net"]
    assert FLIGHT in up.connections[0].flights()
    assert {r for r, _ in results(attempt(gw)).values()} == {"delivered"}


def test_without_pipelining_each_command_waits_for_its_reply(
    upstreams, start_gateway, ca, tmp_path
):
    """No PIPELINING offered: MAIL, each RCPT and DATA come in reads of their own."""
    up = upstreams(pipelining=False)
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    assert send(gw.port, message(1), ["a@example.net", "b@example.net"])[0] == 250
    up.wait_messages(1)
    flights = up.connections[0].flights()
    assert [[b"MAIL"], [b"RCPT"], [b"RCPT"], [b"DATA"]] == [
        f for f in flights if f[0] in (b"MAIL", b"RCPT", b"DATA")
    ]


def test_refused_recipients_keep_their_own_replies_and_the_others_are_delivered(
    upstreams, start_gateway, ca, tmp_path
):
    """One 550 in the flight: recorded as the upstream sent it; the other recipient delivered."""
    up = upstreams(rcpt={"bad@example.net": b"550 5.1.1 No such user"})
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["ok@example.net", "bad@example.net"])
    [received] = up.wait_messages(1)
    assert received.recipients == ["ok@example.net"]
    said = results(attempt(gw))
    assert said["bad@example.net"] == ("failed", "550 5.1.1 No such user")
    assert said["ok@example.net"][0] == "delivered" and "queued as" in said["ok@example.net"][1]


def test_every_recipient_refused_records_their_replies_never_datas_554(
    upstreams, start_gateway, ca, tmp_path
):
    """Both RCPTs refused, DATA answered 554 in the same flight: each recipient fails with its
    own 550, the 554 is in no field of the record; the session is reused for the next message
    (RSET in that flight) and QUIT when the gateway stops."""
    refused = {"a@example.net": b"550 5.1.1 No such user", "b@example.net": b"551 5.1.6 Moved"}
    up = upstreams(rcpt=refused)
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["a@example.net", "b@example.net"])
    record = attempt(gw)
    assert results(record) == {
        "a@example.net": ("failed", "550 5.1.1 No such user"),
        "b@example.net": ("failed", "551 5.1.6 Moved"),
    }
    assert not says(record, 554) and not says(record, 503)
    assert (record["upstream_code"], "upstream_error" in record) == (551, False)
    send(gw.port, message(2), ["c@example.net"])
    [received] = up.wait_messages(1)
    assert received.recipients == ["c@example.net"] and len(up.connections) == 1
    assert [b"RSET", b"MAIL", b"RCPT", b"DATA"] in up.connections[0].flights()
    gw.stop()
    [connection] = up.wait_closed(1)
    assert connection.quit and connection.empty == []


def test_a_354_after_every_recipient_was_refused_gets_a_lone_dot(
    upstreams, start_gateway, ca, tmp_path
):
    """A server that lets DATA through with no recipient: the single dot, nothing else (RFC
    2920 3.1); the recipient keeps its 550 and the session carries the next message."""
    up = upstreams(rcpt={"a@example.net": b"550 5.1.1 No such user"}, no_recipients=b"354 Go")
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["a@example.net"])
    record = attempt(gw)
    assert results(record) == {"a@example.net": ("failed", "550 5.1.1 No such user")}
    assert not says(record, 354) and not says(record, 554)
    send(gw.port, message(2), ["c@example.net"])
    up.wait_messages(1)
    assert up.connections[0].empty == [b""] and len(up.connections) == 1


def test_mail_refused_in_a_flight_fails_over_and_the_503s_are_nobodys(
    upstreams, start_gateway, ca, tmp_path
):
    """MAIL 451 at the primary: its RCPTs' and DATA's 503s are recorded nowhere, the backup
    delivers, and the primary's session stays open in its pool (not closed until the stop)."""
    primary, backup = upstreams(mail=b"451 4.3.0 Try again later"), upstreams()
    document = queue_document(table(primary, ca.ca_file), str(tmp_path / "spool"))
    document["upstreams"] = {
        "primary": table(primary, ca.ca_file),
        "backup": table(backup, ca.ca_file),
    }
    document["rules"][0]["upstream"] = ["primary", "backup"]
    gw = start_gateway(document)
    send(gw.port, message(1), ["a@example.net", "b@example.net"])
    [received] = backup.wait_messages(1)
    record = attempt(gw)
    assert record["upstream"] == "backup" and not says(record, 503)
    assert record["upstreams_tried"] == [
        {"upstream": "primary", "reason": "MAIL answered 451 4.3.0"}
    ]
    assert FLIGHT in primary.connections[0].flights() and not primary.connections[0].closed
    gw.stop()
    assert primary.wait_closed(1)[0].quit


def test_the_connection_lost_mid_flight_defers_and_the_retry_delivers_once(
    upstreams, start_gateway, ca, tmp_path
):
    """The upstream closes at the second RCPT: both recipients deferred (the loss recorded),
    nothing delivered; the next round delivers the message once to both."""
    up = upstreams(drop_at="b@example.net")
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["a@example.net", "b@example.net"])
    first = attempt(gw)
    assert {r for r, _ in results(first).values()} == {"deferred"}
    assert first["upstream_error"].startswith("up: connection lost")
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "delivered"
    [received] = up.messages
    assert received.recipients == ["a@example.net", "b@example.net"]


def test_a_reused_session_sends_its_rset_with_the_next_flight(
    upstreams, start_gateway, ca, tmp_path
):
    """Two messages over one connection: the second's RSET costs no round trip of its own."""
    up = upstreams()
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    for n in (1, 2):
        send(gw.port, message(n), ["a@example.net"])
        gw.audit.wait_for("message.result", n)
    assert len(up.connections) == 1 and len(up.messages) == 2
    flights = up.connections[0].flights()
    assert [b"MAIL", b"RCPT", b"DATA"] in flights and [
        b"RSET",
        b"MAIL",
        b"RCPT",
        b"DATA",
    ] in flights
    assert [b"RSET"] not in flights


def test_an_rset_refused_in_a_queue_flight_resets_that_session_and_a_fresh_one_delivers(
    upstreams, start_gateway, ca, tmp_path
):
    """RSET 500 on the reused session (the server went on and answered DATA 354): no dot is
    sent there (it could deliver an empty message); a new connection delivers, once."""
    up = upstreams()
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["a@example.net"])
    gw.audit.wait_for("message.result", 1)
    up.script.rset = [b"500 5.5.1 Huh"]
    send(gw.port, message(2), ["b@example.net"])
    assert gw.audit.wait_for("message.result", 2)[1]["outcome"] == "delivered"
    assert len(up.connections) == 2 and up.wait_closed(1)[0].empty == []
    assert [m.recipients for m in up.messages] == [["a@example.net"], ["b@example.net"]]
    assert up.connections[1].messages[0].recipients == ["b@example.net"]


def test_an_rset_lost_in_a_queue_flight_is_a_fresh_session_not_a_deferral(
    upstreams, start_gateway, ca, tmp_path
):
    """The upstream closes the reused connection at RSET: the message goes at once on a new one."""
    up = upstreams()
    gw = start_gateway(queued(up, ca.ca_file, str(tmp_path / "spool")))
    send(gw.port, message(1), ["a@example.net"])
    gw.audit.wait_for("message.result", 1)
    up.script.rset = [b""]
    send(gw.port, message(2), ["b@example.net"])
    second = attempt(gw, 2)
    assert results(second)["b@example.net"][0] == "delivered" and len(up.connections) == 2
    assert "connection_retried" not in second


def test_an_rset_refused_in_a_relay_flight_quits_that_session(upstreams, start_gateway, ca):
    """Relay: RSET 500 before MAIL and RCPT (no DATA in a cut-through flight): that session is
    closed with QUIT and a new one relays the message."""
    up = upstreams()
    gw = start_gateway(relay_all(table(up, ca.ca_file)))
    for n, rset in ((1, []), (2, [b"500 5.5.1 Huh"])):
        up.script.rset = rset
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
            assert client.sendmail("app@example.com", ["a@example.net"], message(n)) == {}
    assert len(up.messages) == 2 and len(up.connections) == 2
    assert up.wait_closed(1)[0].quit
    assert [b"RSET", b"MAIL", b"RCPT"] in up.connections[0].flights()
