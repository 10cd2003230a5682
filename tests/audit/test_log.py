"""The audit writer: every record chained, across restarts, reopen (logrotate) and rotation."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit import log as audit
from gateway.audit.log import AuditLog
from gateway.errors import MailgateError


def records(*paths: Path) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def intact(*paths: Path) -> audit_chain.ChainCheck:
    lines = (
        (str(p), n, text) for p in paths for n, text in enumerate(p.read_text().splitlines(), 1)
    )
    return audit_chain.check_lines(lines)


def write(log: AuditLog, count: int, name: str = "gateway.error") -> None:
    for n in range(count):
        log.event(name, n=n)


def test_every_record_carries_seq_prev_and_hash(tmp_path):
    """Events and bound-logger events alike are sealed into one chain."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.event("gateway.started")
    log.bind(session_id="abc").info("session.opened", client_ip="127.0.0.1")
    log.close()
    found = records(path)
    assert [r["seq"] for r in found] == [1, 2]
    assert found[1]["prev"] == found[0]["hash"] and found[1]["session_id"] == "abc"
    assert intact(path).intact


def test_record_line_still_starts_with_timestamp_event_session(tmp_path):
    """The chain fields do not push the human-first keys away from the start."""
    stream = io.StringIO()
    AuditLog("<memory>", stream=stream).bind(session_id="s1").info(
        "session.opened", client_ip="::1"
    )
    assert list(json.loads(stream.getvalue()))[:3] == ["timestamp", "event", "session_id"]


def test_record_head_is_stamped_and_ordered_as_structlog_wrote_it(monkeypatch):
    """timestamp (UTC, as TimeStamper(fmt="iso", utc=True) writes it: the event's own is
    replaced), event, session_id, instance (a given one stays), then the fields as given."""
    import datetime

    import structlog

    moment = datetime.datetime(2026, 12, 2, 15, 4, 5, 67, tzinfo=datetime.UTC)

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return moment

    monkeypatch.setattr(datetime, "datetime", Frozen)
    stamped = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    expected = stamped(None, "info", {})["timestamp"]
    stream = io.StringIO()
    log = AuditLog("-", stream=stream, instance="gw-1")
    log.event("gateway.error", zeta=1, timestamp="forged", session_id="s1", alpha=2)
    log.event("gateway.error", instance="gw-2")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["timestamp"] == expected == "2026-12-02T15:04:05.000067Z"
    assert list(first)[:6] == ["timestamp", "event", "session_id", "instance", "zeta", "alpha"]
    assert first["instance"] == "gw-1" and second["instance"] == "gw-2"


def test_chain_continues_after_a_restart(tmp_path):
    """A second AuditLog on the same file links its first record to the last one there."""
    path = tmp_path / "audit.jsonl"
    first = AuditLog(str(path))
    write(first, 3)
    first.close()
    second = AuditLog(str(path))
    write(second, 2)
    second.close()
    assert [r["seq"] for r in records(path)] == [1, 2, 3, 4, 5]
    assert intact(path).intact


def test_chain_continues_after_a_crash_without_close(tmp_path):
    """Without close() the file's last record still gives the head (read once, at open)."""
    path = tmp_path / "audit.jsonl"
    crashed = AuditLog(str(path))
    write(crashed, 2)
    os.remove(audit.state_path(str(path)))  # even the state file lost
    restarted = AuditLog(str(path))
    write(restarted, 1)
    restarted.close()
    crashed.close()
    assert intact(path).intact and records(path)[-1]["seq"] == 3


def test_torn_last_line_is_ended_before_new_records(tmp_path):
    """A crash mid-line leaves one bad line; new records start on their own line and link on."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    write(log, 2)
    log.close()
    with open(path, "a") as handle:
        handle.write('{"timestamp":"2026-11-28T00:00:00Z","ev')
    log = AuditLog(str(path))
    write(log, 1)
    log.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[3])["seq"] == 3
    assert [b.kind for b in intact(path).breaks] == ["not-json"]


def test_reopen_after_rename_continues_the_chain_in_a_new_file(tmp_path):
    """logrotate renames the file and sends SIGUSR1: the new file's first prev is the old last hash."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    write(log, 3)
    rotated = tmp_path / "audit.jsonl.1"
    path.rename(rotated)
    log.event("gateway.stopped")  # still the old file, until reopen
    assert log.reopen() is True
    write(log, 2)
    log.close()
    old, new = records(rotated), records(path)
    assert [r["event"] for r in old][-1] == "gateway.stopped"
    assert new[0]["event"] == "audit.reopened" and new[0]["prev"] == old[-1]["hash"]
    assert intact(rotated, path).intact


def test_rotation_between_runs_continues_from_the_state_file(tmp_path):
    """Stopped, rotated, started again: the new file links to the rotated one's last record."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    write(log, 3)
    log.close()
    rotated = tmp_path / "audit.jsonl-20261128"
    path.rename(rotated)
    log = AuditLog(str(path))
    write(log, 1)
    log.close()
    assert records(path)[0]["prev"] == records(rotated)[-1]["hash"]
    assert intact(rotated, path).intact


def test_state_file_holds_the_last_record_written(tmp_path):
    """PATH.chain is one line naming the last seq and hash."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    write(log, 4)
    state = audit_chain.parse_state(Path(audit.state_path(str(path))).read_text())
    last = records(path)[-1]
    assert state == audit_chain.Head(last["seq"], last["hash"]) == log.head
    log.close()


def test_writing_reads_nothing_back(tmp_path, monkeypatch):
    """The head is found once at open; each event only hashes and writes (cheap)."""
    calls = []
    real = audit.last_record
    monkeypatch.setattr(audit, "last_record", lambda p: calls.append(p) or real(p))
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    write(log, 50)
    log.close()
    assert len(calls) == 1


def test_stdout_audit_is_chained(capsys):
    """path = "-": the records on standard output carry a chain that verifies."""
    log = AuditLog("-")
    write(log, 3)
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert audit_chain.check_lines(("-", n, t) for n, t in enumerate(lines, 1)).intact


def test_reopen_is_harmless_on_stdout(capsys):
    """Reopening standard output does nothing and the chain goes on."""
    log = AuditLog("-")
    write(log, 1)
    assert log.reopen() is True
    write(log, 1)
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1, 2]


def test_failed_reopen_keeps_writing_to_the_old_file(tmp_path):
    """If the new file cannot be opened, the audit goes on in the old one, which says why."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "audit.jsonl"
    log = AuditLog(str(path))
    write(log, 1)
    moved = tmp_path / "moved"
    folder.rename(moved)  # the directory is gone: the path cannot be opened again
    assert log.reopen() is False
    write(log, 1)
    log.close()
    found = records(moved / "audit.jsonl")
    assert [r["event"] for r in found] == ["gateway.error", "audit.reopen_failed", "gateway.error"]
    assert intact(moved / "audit.jsonl").intact


def test_a_path_that_is_not_a_regular_file_gets_no_state_beside_it():
    """/dev/stdout, a FIFO or /dev/null: records are chained, nothing is read back or created beside it."""
    import stat

    log = AuditLog(os.devnull)
    write(log, 2)
    assert log.reopen() is True
    write(log, 1)
    log.close()
    assert log.head.seq == 4  # 3 events and audit.reopened
    assert not os.path.exists(audit.state_path(os.devnull))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_unwritable_path_is_a_clear_error(tmp_path):
    """An audit path in a missing directory fails at open, naming the key and the path."""
    with pytest.raises(MailgateError, match=r"audit.path: cannot open .*missing/audit.jsonl"):
        AuditLog(str(tmp_path / "missing" / "audit.jsonl"))


def test_concurrent_writers_never_break_the_chain(tmp_path):
    """Events from several threads at once are sealed and written one at a time."""
    import threading

    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    start = threading.Barrier(4)

    def hammer(name: str) -> None:
        start.wait()
        for n in range(200):
            log.bind(session_id=name).info("gateway.error", n=n)

    threads = [threading.Thread(target=hammer, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    result = intact(path)
    assert result.intact and result.verified == 800
