"""Store-and-forward over real sockets: smtplib -> mailgate (queue) -> aiosmtpd, real TLS.

The crash tests run ``mailgate run`` as a real process and kill it with SIGKILL.
Waits are on events (upstream message counts, audit lines, replies), never sleeps.
"""

from __future__ import annotations

import errno
import os
import smtplib
import subprocess
import sys
import threading

import pytest

from gateway.cli import main as cli
from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess
from gateway.testing.trace import without_trace
from tests.integration.queueing import (
    AuditFile,
    Upstream,
    message,
    queue_command,
    queue_document,
    send,
    send_many,
    start_gateway_process,
)


@pytest.fixture
def upstream(server_cert):
    up = Upstream(server_cert)
    yield up
    up.down()


def spool_ids(spool: str, state: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool, state)))


def test_queued_message_is_delivered_byte_for_byte(upstream, start_gateway, ca, tmp_path):
    """A queued message gets 250 with its queue id and reaches the upstream unchanged."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    code, text = send(gw.port, message(1))
    assert code == 250 and text.startswith(b"2.0.0 Queued as ")
    [received] = upstream.server.wait_for(1)
    assert (
        without_trace(received.content) == message(1)
        and received.auth_user
        and received.tls_version
    )
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "delivered" and result["queue_id"] == text.split()[-1].decode()
    assert [r["result"] for r in result["recipients"]] == ["delivered"]
    [queued] = gw.audit.named("message.queued")
    assert queued["queue_id"] == result["queue_id"] and queued["message_id"] == "<q1@example.com>"
    gw.stop()
    assert (
        spool_ids(str(tmp_path / "spool"), "active")
        == spool_ids(str(tmp_path / "spool"), "deferred")
        == []
    )


def test_deliveries_reuse_an_idle_upstream_session(upstream, start_gateway, ca, tmp_path):
    """Messages queued one after another go out over one upstream connection (one TLS handshake, one AUTH)."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    for number in range(3):
        assert send(gw.port, message(number))[0] == 250
        gw.audit.wait_for("message.result", number + 1)
    assert [without_trace(m.content) for m in upstream.server.messages] == [
        message(n) for n in range(3)
    ]
    assert upstream.server.connections == 1


def test_upstream_down_then_back_delivers_each_recipient_once(
    upstream, start_gateway, ca, tmp_path
):
    """While the upstream is down messages are deferred; when it is back each recipient arrives once."""
    upstream.down()
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    for number in range(3):
        assert send(gw.port, message(number), ["a@example.net", "b@example.net"])[0] == 250
    deferred = gw.audit.wait_for("message.deferred", 3)
    assert {e["queue_id"] for e in deferred} == {
        e["queue_id"] for e in gw.audit.named("message.queued")
    }
    attempt = gw.audit.named("delivery.attempt")[0]
    assert (
        attempt["recipients"][0]["result"] == "deferred"
        and "cannot connect" in attempt["upstream_error"]
    )
    server = upstream.back()
    gw.audit.wait_for("message.result", 3)
    gw.stop()
    assert sorted(without_trace(m.content) for m in server.messages) == sorted(
        message(n) for n in range(3)
    )
    assert all(m.recipients == ["a@example.net", "b@example.net"] for m in server.messages)


def test_partial_failure_bounces_the_550_and_retries_the_450(upstream, start_gateway, ca, tmp_path):
    """One 250, one 550, one 450: the 550 fails with a DSN to the sender, the 450 is delivered later."""
    upstream.server.script.rcpt = {
        "bad@example.net": "550 5.1.1 No such user",
        "busy@example.net": "450 4.2.1 Mailbox busy",
    }
    spool = str(tmp_path / "spool")
    document = queue_document(upstream.table(ca.ca_file), spool, bounce=True)
    document["rules"][0].update(senders=["app@example.com"], bounce_to_senders=True)
    gw = start_gateway(document)
    _, text = send(gw.port, message(7), ["ok@example.net", "bad@example.net", "busy@example.net"])
    queue_id = text.split()[-1].decode()
    [first] = gw.audit.wait_for("delivery.attempt")
    assert {r["address"]: r["result"] for r in first["recipients"]} == {
        "ok@example.net": "delivered",
        "bad@example.net": "failed",
        "busy@example.net": "deferred",
    }
    del upstream.server.script.rcpt["busy@example.net"]
    results = gw.audit.wait_for("message.result", 2)  # the original and its DSN
    [original] = [r for r in results if r["queue_id"] == queue_id]
    assert original["outcome"] == "partial"
    assert {r["address"]: r["result"] for r in original["recipients"]} == {
        "ok@example.net": "delivered",
        "bad@example.net": "failed",
        "busy@example.net": "delivered",
    }
    received = upstream.server.wait_for(3)
    null = ("", "<>")  # how aiosmtpd records MAIL FROM:<>
    assert sorted(r for m in received if m.sender not in null for r in m.recipients) == [
        "busy@example.net",
        "ok@example.net",
    ]
    [bounce] = [m for m in received if m.sender in null]
    assert bounce.recipients == ["app@example.com"]
    assert b"report-type=delivery-status" in bounce.content
    assert (
        b"Final-Recipient: rfc822; bad@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        in bounce.content
    )
    assert b"Message-ID: <q7@example.com>" in bounce.content  # the original headers
    gw.stop()
    assert spool_ids(spool, "dead") == [queue_id]


def test_reaching_max_age_fails_the_recipient_with_a_dead_letter(
    upstream, start_gateway, ca, tmp_path
):
    """A recipient still deferred at max_age fails permanently (5.4.7 in the DSN) and is kept as a dead letter."""
    upstream.down()
    spool = str(tmp_path / "spool")
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), spool, max_age=1, bounce=False))
    _, text = send(gw.port, message(1))
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "failed" and result["recipients"][0]["expired"] is True
    assert result["recipients"][0]["reply"].startswith("451 4.4.1")
    assert gw.audit.named("message.bounced") == []  # bounce = false
    gw.stop()
    assert spool_ids(spool, "dead") == [text.split()[-1].decode()]


def test_metrics_show_queue_depth_and_results(upstream, start_gateway, ca, tmp_path):
    """mailgate_queue_depth counts a deferred message; queued and delivered outcomes are counted."""
    upstream.down()
    gw = start_gateway(
        queue_document(
            upstream.table(ca.ca_file), str(tmp_path / "spool"), min_backoff=3600, max_backoff=3600
        )
    )
    send(gw.port, message(1))
    gw.audit.wait_for("message.deferred")
    text = gw.gateway.metrics.render().decode()
    assert "mailgate_queue_depth 1.0" in text
    assert 'mailgate_messages_total{outcome="queued",rule="all",upstream="up"} 1.0' in text


def test_rule_header_edits_apply_to_queued_messages(upstream, start_gateway, ca, tmp_path):
    """A queue rule's strip_headers is applied before the body is spooled."""
    document = queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool"))
    document["rules"][0]["strip_headers"] = ["Subject"]
    gw = start_gateway(document)
    assert send(gw.port, message(1))[0] == 250
    [received] = upstream.server.wait_for(1)
    assert without_trace(received.content) == message(1).replace(b"Subject: queued 1\r\n", b"")


def test_relay_and_queue_recipients_do_not_mix(upstream, start_gateway, ca, tmp_path):
    """A relay-mode recipient after a queued one (and the reverse) gets 452 4.5.3."""
    document = queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool"))
    document["rules"].insert(
        0,
        {"name": "direct", "action": "relay", "upstream": "up", "recipients": ["*@direct.example"]},
    )
    gw = start_gateway(document)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        assert client.rcpt("queued@example.net")[0] == 250
        code, text = client.rcpt("someone@direct.example")
        assert (code, text[:5]) == (452, b"4.5.3")
        client.rset()
        client.mail("app@example.com")
        assert client.rcpt("someone@direct.example")[0] == 250
        code, text = client.rcpt("queued@example.net")
        assert (code, text[:5]) == (452, b"4.5.3")


def test_write_failure_answers_452_and_keeps_serving(
    upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """An injected ENOSPC at commit gives 452 4.3.1, leaves nothing behind, and the next message is queued."""
    from gateway.queue import spool as spool_module

    spool = str(tmp_path / "spool")
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), spool))
    real_fsync = spool_module.os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "fsync", full)
    code, text = send(gw.port, message(1))
    assert (code, text[:5]) == (452, b"4.3.1")
    monkeypatch.setattr(spool_module.os, "fsync", real_fsync)
    assert send(gw.port, message(2))[0] == 250
    [received] = upstream.server.wait_for(1)
    assert without_trace(received.content) == message(2)
    [refused] = [e for e in gw.audit.wait_for("message.result") if "queue_id" not in e]
    assert refused["outcome"] == "deferred" and "No space left" in refused["reason"]
    assert spool_ids(spool, "incoming") == []


@pytest.fixture
def tiny_spool(tmp_path):
    path = str(tmp_path / "tiny")
    os.mkdir(path)
    mounted = subprocess.run(
        # mode=0700: a tmpfs root is 1777 by default, which the spool refuses (others could write)
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", path],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the path"
        )
    yield path
    subprocess.run(["umount", path], check=True)


def test_full_disk_answers_452_and_keeps_serving(upstream, start_gateway, ca, tiny_spool):
    """A spool on a 64 KiB tmpfs: a 200 KB message gets 452 4.3.1, a small one afterwards 250."""
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), tiny_spool))
    big = message(1) + b"".join(b"%06d" % i + b"y" * 90 + b"\r\n" for i in range(2000))
    code, text = send(gw.port, big)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert send(gw.port, message(2))[0] == 250
    assert without_trace(upstream.server.wait_for(1)[0].content) == message(2)
    assert spool_ids(tiny_spool, "incoming") == []


def operator_config(tmp_path, document) -> str:
    path = str(tmp_path / "operator.toml")
    write_toml(document, path)
    return path


def test_retry_delivers_a_deferred_message_now(upstream, start_gateway, ca, tmp_path):
    """With an hour of backoff left, `queue retry ID` gets the message delivered within a scan."""
    upstream.down()
    document = queue_document(
        upstream.table(ca.ca_file), str(tmp_path / "spool"), min_backoff=3600, max_backoff=3600
    )
    gw = start_gateway(document)
    queue_id = send(gw.port, message(5))[1].split()[-1].decode()
    gw.audit.wait_for("message.deferred")
    server = upstream.back()
    assert (
        cli.main(["queue", "retry", queue_id, "--config", operator_config(tmp_path, document)]) == 0
    )
    assert without_trace(server.wait_for(1)[0].content) == message(5)


def test_delete_while_running_is_logged(upstream, start_gateway, ca, tmp_path):
    """`queue delete ID` on a deferred message: message.deleted and a message.result "deleted"."""
    upstream.down()
    document = queue_document(
        upstream.table(ca.ca_file), str(tmp_path / "spool"), min_backoff=3600, max_backoff=3600
    )
    gw = start_gateway(document)
    queue_id = send(gw.port, message(6))[1].split()[-1].decode()
    gw.audit.wait_for("message.deferred")
    assert (
        cli.main(["queue", "delete", queue_id, "--config", operator_config(tmp_path, document)])
        == 0
    )
    [result] = gw.audit.wait_for("message.result")
    assert result["queue_id"] == queue_id and result["outcome"] == "deleted"
    [deleted] = gw.audit.named("message.deleted")
    assert deleted["recipients"] == ["ops@example.net"]


def test_requeue_delivers_a_dead_letter(upstream, start_gateway, ca, tmp_path):
    """A recipient refused with 550 is a dead letter; once the cause is fixed, `queue requeue` delivers it."""
    upstream.server.script.rcpt = {"ops@example.net": "550 5.7.1 Not yet"}
    document = queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool"), bounce=False)
    gw = start_gateway(document)
    queue_id = send(gw.port, message(8))[1].split()[-1].decode()
    assert gw.audit.wait_for("message.result")[0]["outcome"] == "failed"
    gw.audit.wait_for("message.dead")  # moved to dead/ (after the result is logged)
    upstream.server.script.rcpt = {}
    assert (
        cli.main(["queue", "requeue", queue_id, "--config", operator_config(tmp_path, document)])
        == 0
    )
    assert without_trace(upstream.server.wait_for(1)[0].content) == message(8)
    results = gw.audit.wait_for("message.result", 2)
    assert [r["outcome"] for r in results] == ["failed", "delivered"]


# --- real processes, killed with SIGKILL ------------------------------------------------------


@pytest.fixture
def fast_spool(tmp_path):
    """A spool folder on tmpfs when there is one: these tests kill processes, not machines, and the
    shared disk's fsync latency would dominate their run time. Commit ordering is tested in test_spool."""
    base = (
        "/dev/shm"
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
        else str(tmp_path)
    )
    path = os.path.join(base, f"mailgate-test-{os.getpid()}-{tmp_path.name}")
    yield path
    subprocess.run(["rm", "-rf", path], check=True)


def process_config(tmp_path, upstream, ca, spool: str, **queue) -> str:
    document = queue_document(upstream.table(ca.ca_file), spool, **queue)
    document["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    path = str(tmp_path / "mailgate.toml")
    write_toml(document, path)
    return path


@pytest.fixture
def processes():
    started: list[MailgateProcess] = []
    yield started
    for process in started:
        process.stop()


def test_killed_while_receiving_never_sends_the_half_message(
    upstream, ca, tmp_path, fast_spool, processes
):
    """SIGKILL in the middle of DATA: the partial message is discarded at restart and never delivered."""
    config = process_config(tmp_path, upstream, ca, fast_spool)
    gateway = start_gateway_process(config, str(tmp_path))
    processes.append(gateway)
    client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=30)
    client.ehlo("app.test")
    client.mail("app@example.com")
    client.rcpt("ops@example.net")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    [half] = os.listdir(os.path.join(fast_spool, "incoming"))  # created before the 354
    client.send(
        b"Subject: half\r\nMessage-ID: <half@example.com>\r\n\r\nfirst part of the body\r\n"
    )
    gateway.kill()
    client.close()
    processes.append(start_gateway_process(config, str(tmp_path)))
    assert send(processes[-1].port, message(2))[0] == 250
    [received] = upstream.server.wait_for(1)
    assert without_trace(received.content) == message(2)
    audit = AuditFile(str(tmp_path / "audit.jsonl"))
    [discarded] = audit.named("queue.incomplete_discarded")
    assert discarded["queue_ids"] == [half]
    processes[-1].stop()
    assert upstream.server.messages == [received]


def test_killed_right_after_250_delivers_after_restart(
    upstream, ca, tmp_path, fast_spool, processes
):
    """SIGKILL right after the 250 (upstream down): after a restart the message is delivered."""
    upstream.down()
    config = process_config(tmp_path, upstream, ca, fast_spool)
    gateway = start_gateway_process(config, str(tmp_path))
    processes.append(gateway)
    assert send(gateway.port, message(3))[0] == 250
    gateway.kill()
    server = upstream.back()
    processes.append(start_gateway_process(config, str(tmp_path)))
    [received] = server.wait_for(1)
    assert without_trace(received.content) == message(3)


def test_killed_during_delivery_sends_at_most_one_logged_duplicate(
    upstream, ca, tmp_path, fast_spool, processes
):
    """SIGKILL after the upstream took the data but before its 250 reached mailgate: one logged duplicate."""
    arrived, release = threading.Event(), threading.Event()

    def hold(_message) -> None:  # runs in the upstream's loop: the 250 waits until released
        if not arrived.is_set():
            arrived.set()
            release.wait(30)

    upstream.server.on_message = hold
    config = process_config(tmp_path, upstream, ca, fast_spool)
    gateway = start_gateway_process(config, str(tmp_path))
    processes.append(gateway)
    _, text = send(gateway.port, message(4))
    queue_id = text.split()[-1].decode()
    assert arrived.wait(30)
    gateway.kill()
    release.set()
    processes.append(start_gateway_process(config, str(tmp_path)))
    first, second = upstream.server.wait_for(2)
    assert first.content == second.content and without_trace(first.content) == message(4)
    audit = AuditFile(str(tmp_path / "audit.jsonl"))
    processes[-1].stop()
    [risk] = audit.named("delivery.duplicate_risk")
    assert risk["queue_id"] == queue_id and risk["recipients"] == ["ops@example.net"]
    [attempt] = [a for a in audit.named("delivery.attempt") if a.get("possible_duplicate")]
    assert attempt["possible_duplicate"] == ["ops@example.net"]
    assert [r["outcome"] for r in audit.named("message.result")] == ["delivered"]
    assert len(upstream.server.messages) == 2


def test_thousand_messages_queued_while_down_are_drained(
    upstream, ca, tmp_path, fast_spool, processes
):
    """1,000 messages each get 250 while the upstream is down; once it is back every one arrives once."""
    upstream.down()
    config = process_config(tmp_path, upstream, ca, fast_spool, max_backoff=3600)
    processes.append(start_gateway_process(config, str(tmp_path)))
    answers = send_many(processes[-1].port, range(1000))
    assert [code for code, _ in answers] == [250] * 1000
    server = upstream.back()
    assert queue_command(config, str(tmp_path), "retry", "--all").returncode == 0
    received = server.wait_for(1000, timeout=90)
    processes[-1].stop()
    assert sorted(without_trace(m.content) for m in received) == sorted(
        message(n) for n in range(1000)
    )
    assert len(server.messages) == 1000
    results = AuditFile(str(tmp_path / "audit.jsonl")).named("message.result")
    assert len(results) == 1000 and {r["outcome"] for r in results} == {"delivered"}


def test_done_when_thousand_messages_survive_two_kills(
    upstream, ca, tmp_path, fast_spool, processes
):
    """Issue 3's scenario: 1,000 messages get 250 with the upstream stopped; mailgate is killed -9
    twice during delivery; after a restart and `queue retry --all` the upstream holds every
    Message-ID, and the audit has a message.queued and a delivered message.result for each."""
    upstream.down()
    config = process_config(tmp_path, upstream, ca, fast_spool, max_backoff=3600)
    processes.append(start_gateway_process(config, str(tmp_path)))
    answers = send_many(processes[-1].port, range(1000))
    assert [code for code, _ in answers] == [250] * 1000
    arrivals = threading.Condition()
    seen: set[bytes] = set()

    def arrived(received) -> None:
        with arrivals:
            seen.add(received.content.split(b"Message-ID: ")[1].split(b"\r\n")[0])
            arrivals.notify_all()

    def wait_for_distinct(count: int) -> None:
        with arrivals:
            assert arrivals.wait_for(lambda: len(seen) >= count, 60), (
                f"{len(seen)} of {count} arrived"
            )

    server = upstream.back()
    server.on_message = arrived
    for kill in range(2):
        assert queue_command(config, str(tmp_path), "retry", "--all").returncode == 0
        wait_for_distinct(150 * (kill + 1))  # deliveries are under way
        processes[-1].kill()
        processes.append(start_gateway_process(config, str(tmp_path)))
    retried = queue_command(config, str(tmp_path), "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    wait_for_distinct(1000)
    audit = AuditFile(str(tmp_path / "audit.jsonl"))
    with arrivals:
        assert seen == {b"<q%d@example.com>" % n for n in range(1000)}
    processes[-1].stop()  # let the deliveries in flight log their result
    queued = {e["queue_id"]: e["message_id"] for e in audit.named("message.queued")}
    results = {e["queue_id"]: e for e in audit.named("message.result")}
    assert len(queued) == 1000 and set(results) == set(queued)
    assert {e["outcome"] for e in results.values()} == {"delivered"}
    duplicates = len(server.messages) - 1000
    risky = sum(len(e["recipients"]) for e in audit.named("delivery.duplicate_risk"))
    assert duplicates <= risky
    assert queue_command(config, str(tmp_path), "list").stdout == ""


def test_unusable_spool_path_stops_start_up_with_its_key(upstream, ca, tmp_path):
    """A queue.path that cannot be created: `mailgate run` exits 1 naming queue.path, without a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = process_config(tmp_path, upstream, ca, str(blocker / "spool"))
    env = dict(os.environ, MAILGATE_TEST_PASSWORD="unused")
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", config],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1
    assert (
        run.stderr.startswith("mailgate: queue.path: cannot use ") and "Traceback" not in run.stderr
    )


def test_app_leaving_during_the_commit_neither_corrupts_nor_loses_the_message(
    upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """An app that disconnects while its message is being committed: the commit completes and the
    message is delivered whole (never a half-removed folder in the spool)."""
    import socket

    from gateway.queue.enqueue import QueueTransaction

    hold, entered = threading.Event(), threading.Event()
    real_commit = QueueTransaction.commit

    def slow_commit(self, envelope):  # runs in the thread pool: hold it until the app has gone
        entered.set()
        assert hold.wait(30)
        real_commit(self, envelope)

    monkeypatch.setattr(QueueTransaction, "commit", slow_commit)
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall(
        b"EHLO app\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<ops@example.net>\r\nDATA\r\n"
    )
    reader = sock.makefile("rb")
    replies = []
    while len(replies) < 5:  # greeting, EHLO (multi-line, last line counts), MAIL, RCPT, DATA
        line = reader.readline()
        if line[3:4] == b" ":
            replies.append(line)
    sock.sendall(
        message(7).replace(b"\r\n.", b"\r\n..") + b".\r\n"
    )  # dot-stuffed, as a client sends it
    assert entered.wait(30)
    sock.shutdown(socket.SHUT_RDWR)  # close() alone waits for the makefile() reader to go
    sock.close()
    gw.audit.wait_for("session.closed")
    hold.set()
    [received] = upstream.server.wait_for(1)
    assert without_trace(received.content) == message(7)
    assert gw.audit.wait_for("message.queued")[0]["message_id"] == "<q7@example.com>"


def test_outcome_that_cannot_be_written_is_not_delivered_again(
    upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """Disk full when recording a delivery: the message is not sent again by this process (no loop),
    and the failure is in the audit."""
    from gateway.queue import spool as spool_module

    real_save = spool_module.Spool.save

    def save(self, state, envelope, **options):
        if any(r.status == spool_module.DELIVERED for r in envelope.recipients):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, state, envelope, **options)

    monkeypatch.setattr(spool_module.Spool, "save", save)
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), str(tmp_path / "spool")))
    assert send(gw.port, message(1))[0] == 250
    failed = gw.audit.wait_for(
        "queue.write_failed", 2
    )  # two rounds: the delivery, then a retry of the record
    assert failed[0]["delivered_not_recorded"] == ["ops@example.net"]
    assert len(upstream.server.messages) == 1


def test_commit_that_fails_after_its_rename_is_not_delivered(
    upstream, start_gateway, ca, tmp_path, monkeypatch
):
    """A commit whose last fsync fails answers 452 and leaves nothing in active/ to be delivered."""
    from gateway.queue import spool as spool_module

    real_fsync_dir = spool_module.fsync_dir
    failures = []

    def fsync_dir(path):
        if path.endswith(os.sep + "active") and not failures:
            failures.append(path)
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync_dir(path)

    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    spool = str(tmp_path / "spool")
    gw = start_gateway(queue_document(upstream.table(ca.ca_file), spool))
    code, text = send(gw.port, message(1))
    assert (code, text[:5]) == (452, b"4.3.1")
    assert failures and spool_ids(spool, "active") == [] and spool_ids(spool, "incoming") == []


def test_killed_during_group_commits_loses_nothing_answered_250(
    upstream, ca, tmp_path, fast_spool, processes
):
    """Format 2 with the group commit: ten apps commit in parallel (batches share one fsync of
    active/) and mailgate is killed -9 in the middle; every message answered 250 is delivered
    after the restart, and nothing it did not answer 250 arrives."""
    upstream.down()
    config = process_config(tmp_path, upstream, ca, fast_spool, max_backoff=3600)
    processes.append(start_gateway_process(config, str(tmp_path)))
    port = processes[-1].port
    answered: list[int] = []
    lock, enough = threading.Lock(), threading.Event()

    def app(first: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("app.test")
                for number in range(first, first + 1000):
                    client.mail("app@example.com")
                    client.rcpt("ops@example.net")
                    if client.data(message(number))[0] == 250:
                        with lock:
                            answered.append(number)
                            if len(answered) >= 100:
                                enough.set()
        except (OSError, smtplib.SMTPException):
            pass  # the gateway was killed under it

    apps = [threading.Thread(target=app, args=(n * 1000,)) for n in range(10)]
    for thread in apps:
        thread.start()
    assert enough.wait(60)
    processes[-1].kill()
    for thread in apps:
        thread.join(30)
    with lock:
        acknowledged = {message(n) for n in answered}
    arrivals, seen = threading.Condition(), set()

    def arrived(received) -> None:
        with arrivals:
            seen.add(without_trace(received.content))
            arrivals.notify_all()

    server = upstream.back()
    server.on_message = arrived
    processes.append(start_gateway_process(config, str(tmp_path)))
    assert queue_command(config, str(tmp_path), "retry", "--all").returncode == 0
    with arrivals:
        assert arrivals.wait_for(lambda: acknowledged <= seen, 90), len(acknowledged - seen)
    processes[-1].stop()
    contents = [without_trace(m.content) for m in server.messages]
    assert acknowledged <= set(contents)
    assert len(set(contents) - acknowledged) <= 10  # at most one per app: committed, reply unread
    assert len(contents) == len(set(contents))  # the upstream was down at the kill: no duplicate
