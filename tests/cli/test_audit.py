"""`mailgate audit ...` as a user runs it: finding files, rotated and gzipped; clear errors; --follow."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.cli.main import main
from gateway.testing import audit_sample

START = dt.datetime(2026, 11, 27, 20, tzinfo=dt.UTC)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_log(path: Path, sessions: int, start: dt.datetime = START, seed: int = 5) -> AuditLog:
    log = AuditLog(str(path))
    audit_sample.write(log, sessions, start, seed)
    return log


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose audit path has two rotated siblings (one gzipped) written by one chained writer."""
    path = tmp_path / "audit.jsonl"
    log = write_log(path, 10)
    os.rename(path, tmp_path / "audit.jsonl.2")
    log.reopen()
    audit_sample.write(log, 10, START + dt.timedelta(hours=1), seed=6)
    os.rename(path, tmp_path / "audit.jsonl.1")
    log.reopen()
    audit_sample.write(log, 10, START + dt.timedelta(hours=2), seed=7)
    log.close()
    with (
        open(tmp_path / "audit.jsonl.2", "rb") as plain,
        gzip.open(tmp_path / "audit.jsonl.2.gz", "wb") as packed,
    ):
        shutil.copyfileobj(plain, packed)
    os.remove(tmp_path / "audit.jsonl.2")
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[audit]\npath = "{path}"\n')
    return config, path


def test_config_finds_current_rotated_and_gzipped_files(rotated, capsys):
    """--config FILE reads [audit] path and its rotated siblings; the chain runs across all three."""
    config, _ = rotated
    code, out, _ = cli(capsys, "audit", "verify", "--config", str(config))
    assert code == 0 and "record(s) verified in 3 file(s), seq 1 to 92; last hash " in out


def test_files_in_any_order_are_read_oldest_first(rotated, capsys):
    """A shell glob lists the current file first; search still prints in time order."""
    _, path = rotated
    files = sorted(
        str(p) for p in path.parent.glob("audit.jsonl*") if not p.name.endswith(".chain")
    )
    code, out, _ = cli(capsys, "audit", "search", "--json", *files)
    times = [json.loads(line)["timestamp"] for line in out.splitlines()]
    assert code == 0 and len(times) == 30 and times == sorted(times)


def test_a_missing_rotated_file_is_a_gap_in_the_chain(rotated, capsys):
    """Verifying without the middle file reports the records that are missing, and where."""
    _, path = rotated
    code, out, _ = cli(capsys, "audit", "verify", f"{path}.2.gz", str(path))
    assert code == 1 and out.startswith(f"{path}:1: 31 record(s) missing before this line")


def test_an_empty_current_file_alone_is_not_reported_as_truncated(rotated, capsys):
    """Right after rotation the current file holds nothing yet: no records, but nothing cut either."""
    _, path = rotated
    path.write_text("")
    code, _, err = cli(capsys, "audit", "verify", str(path))
    assert code == 1 and err == f"mailgate: no audit records in {path}\n"


def test_missing_file_is_one_line_naming_it(tmp_path, capsys):
    """A file that does not exist: exit 1, the file named, no traceback."""
    code, _, err = cli(capsys, "audit", "search", str(tmp_path / "nope.jsonl"))
    assert (
        code == 1
        and err == f"mailgate: {tmp_path / 'nope.jsonl'}: cannot open: No such file or directory\n"
    )


def test_an_audit_log_that_turns_to_garbage_stops_after_ten_bad_lines(tmp_path, capsys):
    """Beyond ten bad lines in one file the rest of it is not read."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 1).close()
    with open(path, "a") as handle:
        handle.write("\x00garbage\n" * 100)
    code, _, err = cli(capsys, "audit", "summary", str(path))
    assert code == 1 and len(err.splitlines()) == 11
    assert (
        err.splitlines()[-1]
        == f"mailgate: {path}: not an audit log (more than 10 lines are not JSON records)"
    )


def test_line_that_is_not_json_is_named_and_fails_the_command(tmp_path, capsys):
    """Line 4 is not JSON: it is named on stderr, the other rows still print, exit 1."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 3).close()
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(3, "this is not json\n")
    path.write_text("".join(lines))
    code, out, err = cli(capsys, "audit", "search", "--json", str(path))
    assert code == 1 and len(out.splitlines()) == 3
    assert (
        err
        == f"mailgate: {path}:4: not a JSON record (a record is one JSON object on one line); skipped\n"
    )


def test_a_file_that_is_not_an_audit_log_is_refused_at_once(tmp_path, capsys):
    """A file whose first lines hold no JSON record is refused as a whole, not line by line."""
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    code, _, err = cli(capsys, "audit", "summary", str(path))
    assert (
        code == 1
        and err == f"mailgate: {path}: not an audit log (no JSON record in its first 16 lines)\n"
    )


def test_no_files_and_no_config_is_a_usage_error(capsys):
    """Nothing to read: exit 2 and what to give."""
    code, _, err = cli(capsys, "audit", "summary")
    assert code == 2 and "give audit files, or --config FILE" in err


def test_files_and_config_together_is_a_usage_error(rotated, capsys):
    """Either files or --config: mixing them would be ambiguous."""
    config, path = rotated
    code, _, err = cli(capsys, "audit", "verify", "--config", str(config), str(path))
    assert code == 2 and "not both" in err


def test_config_with_stdout_audit_says_there_is_no_file(tmp_path, capsys):
    """audit.path = "-": the error names the config file and the key."""
    config = tmp_path / "mailgate.toml"
    config.write_text('[audit]\npath = "-"\n')
    code, _, err = cli(capsys, "audit", "search", "--config", str(config))
    assert code == 2 and err.startswith(
        f'mailgate: {config}: audit.path: found "-" (standard output), expected a file path'
    )


def test_invalid_config_lists_its_problems(tmp_path, capsys):
    """A config that does not load gives the loader's file: key: found/expected lines."""
    config = tmp_path / "mailgate.toml"
    config.write_text("[audit]\npath = 5\n")
    code, _, err = cli(capsys, "audit", "verify", "--config", str(config))
    assert (
        code == 1 and f"{config}: audit.path: found 5 (integer), expected a non-empty string" in err
    )


def test_stdout_logs_verify_with_allow_restarts(tmp_path, capsys):
    """Two runs captured from stdout: each starts a chain; --allow-restarts (with --no-state:
    a capture has no chain state) accepts that."""
    path = tmp_path / "captured.jsonl"
    for seed in (1, 2):
        log = AuditLog("-")
        audit_sample.write(log, 2, START + dt.timedelta(hours=seed), seed)
        with open(path, "a") as handle:
            handle.write(capsys.readouterr().out)
    code, out, _ = cli(capsys, "audit", "verify", str(path))
    assert code == 1 and ":7: a new chain starts here (seq 1)" in out
    code, out, _ = cli(capsys, "audit", "verify", "--allow-restarts", str(path))
    assert code == 1 and f"{path}.chain: the chain state is missing" in out
    code, out, _ = cli(capsys, "audit", "verify", "--allow-restarts", "--no-state", str(path))
    assert code == 0 and "a new chain started 1 time(s)" in out


def test_show_accepts_a_unique_prefix_and_refuses_an_ambiguous_one(tmp_path, capsys):
    """The first characters of a session id are enough when only one session has them."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 40).close()
    ids = sorted({json.loads(line)["session_id"] for line in path.read_text().splitlines()})
    code, out, _ = cli(capsys, "audit", "show", ids[0][:10], str(path))
    assert code == 0 and out.startswith(f"session {ids[0]}: 3 event(s)")
    shared = os.path.commonprefix(ids[:2]) or ids[0][:0]
    if len(shared) >= 4:  # pragma: no cover - depends on the ids drawn
        assert cli(capsys, "audit", "show", shared, str(path))[0] == 2
    code, _, err = cli(capsys, "audit", "show", "ab", str(path))
    assert code == 2 and "SESSION_ID" in err


def test_summary_html_to_an_unwritable_place_names_it(tmp_path, capsys):
    """--html into a missing directory: exit 1 naming the page's path."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 2).close()
    target = tmp_path / "missing" / "page.html"
    code, _, err = cli(capsys, "audit", "summary", "--html", str(target), str(path))
    assert code == 1 and err.startswith(f"mailgate: {target}: cannot write the HTML page")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_follow_prints_new_messages_until_interrupted(stop, tmp_path):
    """search --follow in a real process: old rows, rows written later, then a clean stop (Ctrl-C, SIGTERM)."""
    path = tmp_path / "audit.jsonl"
    write_log(path, 2).close()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "audit", "search", "--follow", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = [json.loads(process.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
        log = AuditLog(str(path))
        audit_sample.write(log, 1, START + dt.timedelta(hours=1), seed=9)
        log.close()
        later = json.loads(process.stdout.readline())  # type: ignore[union-attr]
    finally:
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
    assert [r["seq"] for r in first] == [2, 5] and later["seq"] == 8
    assert process.returncode == 0 and out == "" and "Traceback" not in err
