"""Cutting the tail of the audit trail never passes `mailgate audit verify` unnoticed.

The attack: remove the last records of the file, then delete, empty or garble the
chain state beside it (or rewrite the state to match the cut). Verify must say
what it could not check and exit non-zero; a head kept elsewhere (`audit head`,
then `verify --head`) catches even a consistent rewrite of the file and its state.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

from gateway.audit import chain as audit_chain
from gateway.audit.log import AuditLog
from gateway.cli.main import main


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, count: int, start: int = 0) -> AuditLog:
    log = AuditLog(str(path))
    for number in range(start, start + count):
        log.event("message.result", number=number, outcome="relayed")
    return log


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write(path, 12).close()
    return path


def cut_tail(path: Path, records: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-records]))


def state(path: Path) -> Path:
    return Path(f"{path}.chain")


# --- a missing, empty or corrupt state fails verify, whatever the damage ---------------------

CORRUPT_STATES = {
    "empty": b"",
    "garbage": b"\x00\x01garbage\n",
    "torn line": b"mailgate audit chain v1 seq=0000000000000000",
    "no hash": b"mailgate audit chain v1 seq=00000000000000000012\n",
    "short hash": b"mailgate audit chain v1 seq=12 hash=abc\n",
    "upper-case hash": b"mailgate audit chain v1 seq=12 hash=" + b"A" * 64 + b"\n",
    "other version": b"mailgate audit chain v2 seq=12 hash=" + b"a" * 64 + b"\n",
    "two hashes": b"mailgate audit chain v1 seq=12 hash=" + b"a" * 64 + b" hash=" + b"b" * 64,
    "trailing junk": b"mailgate audit chain v1 seq=12 hash=" + b"a" * 64 + b"\nmore\n",
    "huge": b"mailgate audit chain v1 seq=12 hash=" + b"a" * 64 + b"\n" + b" " * 4096,
}


@pytest.mark.parametrize("cut", [0, 3])
def test_a_missing_state_fails_and_says_so(log_file, capsys, cut):
    """No PATH.chain: exit 1, naming the state file, what is missing and what to do."""
    if cut:
        cut_tail(log_file, cut)
    os.remove(state(log_file))
    code, out, _ = cli(capsys, "audit", "verify", str(log_file))
    assert code == 1
    assert f"{log_file}.chain: the chain state is missing; expected one line" in out
    assert "--no-state" in out and not out.startswith("OK")
    assert out.splitlines()[-1].startswith("FAILED: 1 problem(s) in ")
    assert "the end of the chain cannot be checked" in out


@pytest.mark.parametrize("name", sorted(CORRUPT_STATES))
def test_an_empty_or_corrupt_state_fails_and_says_so(log_file, capsys, name):
    """Every state that is not the one line the writer writes: exit 1, the file named."""
    cut_tail(log_file, 2)
    state(log_file).write_bytes(CORRUPT_STATES[name])
    code, out, _ = cli(capsys, "audit", "verify", str(log_file))
    assert code == 1 and f"{log_file}.chain: the chain state is " in out
    assert ("is empty" if name == "empty" else "is corrupt") in out
    assert 'expected one line "mailgate audit chain v1 seq=N hash=<64 hex digits>"' in out


@pytest.mark.parametrize("kind", ["directory", "fifo", "link to /dev/zero"])
def test_a_state_that_is_not_a_regular_file_fails_without_hanging(log_file, capsys, kind):
    """A folder, a FIFO (whose open would block), a device: named, exit 1, no traceback."""
    os.remove(state(log_file))
    if kind == "directory":
        os.mkdir(state(log_file))
    elif kind == "fifo":
        os.mkfifo(state(log_file))
    else:
        os.symlink("/dev/zero", state(log_file))
    code, out, _ = cli(capsys, "audit", "verify", str(log_file))
    assert code == 1 and "the chain state is not a regular file" in out


def test_with_config_a_missing_state_fails_too(log_file, tmp_path, capsys):
    """--config finds the files through audit.path: the same rule."""
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[audit]\npath = "{log_file}"\n')
    state(log_file).write_bytes(b"")
    code, out, _ = cli(capsys, "audit", "verify", "--config", str(config))
    assert code == 1 and "the chain state is empty" in out


def test_a_cut_tail_with_the_state_intact_is_found(log_file, capsys):
    """The state says more was written than the file holds."""
    cut_tail(log_file, 3)
    code, out, _ = cli(capsys, "audit", "verify", str(log_file))
    assert code == 1 and "3 record(s) cut from the end" in out


def test_a_state_that_names_a_record_the_chain_does_not_hold_is_found(log_file, capsys):
    """A state rewritten to an earlier seq with a made-up hash: the record at that seq differs."""
    state(log_file).write_bytes(audit_chain.format_state(audit_chain.Head(5, "c" * 64)))
    code, out, _ = cli(capsys, "audit", "verify", str(log_file))
    assert code == 1 and "record seq 5 has hash" in out and "the chain was rewritten" in out


def test_no_state_is_accepted_only_when_asked_and_said(log_file, capsys):
    """--no-state: exit 0, with a note that the end of the chain was not checked."""
    os.remove(state(log_file))
    code, out, _ = cli(capsys, "audit", "verify", "--no-state", str(log_file))
    assert code == 0 and out.splitlines()[-1].startswith("OK: 12 record(s) verified")
    assert "note: --no-state: the end of the chain was not checked" in out


# --- a head kept elsewhere: `audit head` and `verify --head` ---------------------------------


def test_head_prints_the_last_record_and_verify_reaches_it(log_file, capsys):
    """audit head prints SEQ:HASH of the last record; verify --head with it passes."""
    last = audit_chain.unseal(log_file.read_text().splitlines()[-1])
    assert last is not None
    code, out, err = cli(capsys, "audit", "head", str(log_file))
    assert code == 0 and err == "" and out == f"12:{last.hash}\n"
    code, out, _ = cli(capsys, "audit", "verify", "--head", out.strip(), str(log_file))
    assert code == 0 and "reaches --head seq 12" in out


def test_a_kept_head_still_verifies_after_the_log_grew(log_file, capsys):
    """Records written after the head was kept follow it: still OK."""
    code, head, _ = cli(capsys, "audit", "head", str(log_file))
    write(log_file, 5, start=100).close()
    code, out, _ = cli(capsys, "audit", "verify", "--head", head.strip(), str(log_file))
    assert code == 0 and "seq 1 to 17; reaches --head seq 12" in out


def test_a_consistent_rewrite_of_tail_and_state_fails_against_the_kept_head(log_file, capsys):
    """The tail cut and the state rewritten to match: only the kept head can tell, and does."""
    _, head, _ = cli(capsys, "audit", "head", str(log_file))
    cut_tail(log_file, 4)
    last = audit_chain.unseal(log_file.read_text().splitlines()[-1])
    assert last is not None
    state(log_file).write_bytes(audit_chain.format_state(audit_chain.Head(last.seq, last.hash)))
    assert cli(capsys, "audit", "verify", str(log_file))[0] == 0  # consistent, without an anchor
    code, out, _ = cli(capsys, "audit", "verify", "--head", head.strip(), str(log_file))
    assert code == 1 and "--head names seq 12: 4 record(s) cut from the end" in out


def test_a_rehashed_rewrite_fails_against_the_kept_head(log_file, tmp_path, capsys):
    """One record edited and every record after it re-sealed, state too: the kept head differs."""
    _, head, _ = cli(capsys, "audit", "head", str(log_file))
    records = [line for line in log_file.read_text().splitlines()]
    forged = tmp_path / "forged.jsonl"
    writer = AuditLog(str(forged))
    for index, line in enumerate(records):  # replay through the real writer, one field changed
        number = 999 if index == 3 else index
        writer.event("message.result", number=number, outcome="relayed")
    writer.close()
    shutil.copy(forged, log_file)
    shutil.copy(f"{forged}.chain", state(log_file))
    code, out, _ = cli(capsys, "audit", "verify", "--head", head.strip(), str(log_file))
    assert code == 1 and "record seq 12 has hash" in out and "rewritten" in out


def test_a_head_before_the_files_given_is_not_taken_as_reached(log_file, tmp_path, capsys):
    """--head names a record in files not given: it cannot be checked, so it fails."""
    lines = log_file.read_text().splitlines(keepends=True)
    later = tmp_path / "later.jsonl"
    later.write_text("".join(lines[6:]))
    shutil.copy(state(log_file), f"{later}.chain")
    first = audit_chain.unseal(lines[2].rstrip("\n"))
    assert first is not None
    code, out, _ = cli(capsys, "audit", "verify", "--head", f"3:{first.hash}", str(later))
    assert code == 1 and "--head: names seq 3, before the first record here (seq 7)" in out


@pytest.mark.parametrize(
    "value", ["", "12", "12:", "abc:" + "a" * 64, "0:" + "0" * 64, "12:" + "A" * 64, "-1:x"]
)
def test_a_malformed_head_is_a_usage_error(log_file, capsys, value):
    """--head must be SEQ:HASH: exit 2, what was found and what was expected."""
    code, _, err = cli(capsys, "audit", "verify", f"--head={value}", str(log_file))
    assert code == 2 and err.startswith("mailgate: --head: found ")
    assert "expected SEQ:HASH as printed by `mailgate audit head`" in err


def test_head_refuses_a_cut_tail_and_a_missing_state(log_file, capsys):
    """audit head prints nothing to keep when the state says records were cut, or is missing."""
    cut_tail(log_file, 2)
    code, out, err = cli(capsys, "audit", "head", str(log_file))
    assert code == 1 and out == "" and "records were cut from the end" in err
    os.remove(state(log_file))
    code, out, err = cli(capsys, "audit", "head", str(log_file))
    assert code == 1 and out == "" and "the chain state is missing" in err
    code, out, _ = cli(capsys, "audit", "head", "--no-state", str(log_file))
    assert code == 0 and out.startswith("10:")


def test_head_refuses_an_edited_or_unsealed_last_line(log_file, capsys):
    """The last line must be a sealed record whose bytes match its hash."""
    text = log_file.read_text()
    log_file.write_text(text.replace('"number":11', '"number":77'))
    code, out, err = cli(capsys, "audit", "head", str(log_file))
    assert code == 1 and out == "" and "does not match its hash" in err
    log_file.write_text(text + '{"event":"forged"}\n')
    code, out, err = cli(capsys, "audit", "head", str(log_file))
    assert code == 1 and out == "" and "not a sealed record" in err


def test_head_of_rotated_files_reads_the_newest_even_gzipped(tmp_path, capsys):
    """After rotation the newest records may be in a .gz file given on the command line."""
    path = tmp_path / "audit.jsonl"
    write(path, 4).close()
    expected = audit_chain.unseal(path.read_text().splitlines()[-1])
    assert expected is not None
    with open(path, "rb") as plain, gzip.open(tmp_path / "audit.jsonl.1.gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    code, out, _ = cli(capsys, "audit", "head", "--no-state", str(tmp_path / "audit.jsonl.1.gz"))
    assert code == 0 and out == f"4:{expected.hash}\n"


def test_head_ignores_a_torn_last_line(log_file, capsys):
    """A line still being written is not the head: the last complete record is."""
    last = audit_chain.unseal(log_file.read_text().splitlines()[-1])
    assert last is not None
    with open(log_file, "a") as handle:
        handle.write('{"timestamp":"2026-11-28T00:00:00Z","event":"message.res')
    code, out, _ = cli(capsys, "audit", "head", str(log_file))
    assert code == 0 and out == f"12:{last.hash}\n"
