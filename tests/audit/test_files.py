"""Finding, ordering and streaming audit files: rotated names, gzip, torn lines, following a live file."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest

from gateway.audit import files as audit_files
from gateway.audit.files import AuditFileError, Progress, Scan


def record(seq: int, when: str = "2026-11-28T00:00:00Z") -> str:
    return json.dumps({"timestamp": when, "event": "e", "seq": seq}) + "\n"


def lines_of(scan: Scan) -> list[tuple[str, int, str]]:
    return [(Path(p).name, n, t) for p, n, t in scan]


def test_siblings_are_the_current_file_and_logrotate_names(tmp_path):
    """Numbered and dated names, gzipped or not; never the chain state or other files."""
    names = [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2.gz",
        "audit.jsonl-20261128",
        "audit.jsonl-20261127.gz",
        "audit.jsonl.chain",
        "audit.jsonl.bak",
        "other.jsonl",
        "audit.jsonlx",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    found = sorted(Path(p).name for p in audit_files.siblings(str(tmp_path / "audit.jsonl")))
    assert found == sorted(names[:5])


def test_chain_order_puts_oldest_first_whatever_the_names(tmp_path):
    """Files are ordered by their first record, so a shell glob's order does not matter."""
    (tmp_path / "audit.jsonl").write_text(record(7, "2026-11-28T03:00:00Z"))
    with gzip.open(tmp_path / "audit.jsonl.2.gz", "wt") as handle:
        handle.write(record(1, "2026-11-28T01:00:00Z"))
    (tmp_path / "audit.jsonl.1").write_text(record(4, "2026-11-28T02:00:00Z"))
    (tmp_path / "empty").write_text("")
    paths = [
        str(tmp_path / n) for n in ("audit.jsonl", "audit.jsonl.1", "empty", "audit.jsonl.2.gz")
    ]
    assert [Path(p).name for p in audit_files.chain_order(paths)] == [
        "audit.jsonl.2.gz",
        "audit.jsonl.1",
        "audit.jsonl",
    ]


def test_gzip_files_are_recognised_by_content(tmp_path):
    """A gzip file without a .gz name is still read as gzip."""
    path = tmp_path / "audit.jsonl.1"
    with gzip.open(path, "wt") as handle:
        handle.write(record(1) + record(2))
    assert [n for _, n, _ in lines_of(Scan([str(path)], Progress(enabled=False)))] == [1, 2]


def test_incomplete_last_line_is_held_back_and_noted(tmp_path):
    """A line still being written is not yielded; where it is, is remembered."""
    path = tmp_path / "audit.jsonl"
    path.write_text(record(1) + '{"timestamp":"2026')
    scan = Scan([str(path)], Progress(enabled=False))
    assert [n for _, n, _ in lines_of(scan)] == [1]
    assert scan.incomplete == [(str(path), 2)]
    assert scan.positions[str(path)].offset == len(record(1))


def test_missing_file_names_the_file(tmp_path):
    """A file that does not exist is one clear error naming it."""
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(AuditFileError, match=r"nope.jsonl: cannot open: No such file or directory"):
        list(Scan([missing], Progress(enabled=False)))


def test_corrupt_gzip_names_the_file_and_line(tmp_path):
    """A truncated gzip stops with the file and the last good line."""
    path = tmp_path / "audit.jsonl.1.gz"
    data = gzip.compress((record(1) * 2000).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AuditFileError, match=r"audit.jsonl.1.gz: cannot read after line \d+"):
        list(Scan([str(path)], Progress(enabled=False)))


def test_scan_streams_one_line_at_a_time(tmp_path, monkeypatch):
    """After the first line of a large file, only a buffer's worth has been read (bounded memory)."""
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record(seq) for seq in range(1, 20001)))
    opened = []
    real_open = audit_files._open_binary

    def spying(name: str):
        raw, reader = real_open(name)
        opened.append(raw)
        return raw, reader

    monkeypatch.setattr(audit_files, "_open_binary", spying)
    lines = iter(Scan([str(path)], Progress(enabled=False)))
    next(lines)
    assert opened[0].tell() <= 64 * 1024 < path.stat().st_size
    assert sum(1 for _ in lines) == 19999


def test_progress_is_shown_only_when_enabled_and_cleared_at_the_end():
    """Progress goes to stderr only for a terminal, and erases itself when done."""
    stream = io.StringIO()
    ticks = iter([0.0, 0.0, 1.0, 1.0])
    progress = Progress(stream, enabled=True, clock=lambda: next(ticks))
    progress.update("a.jsonl", 500_000_000, 1_000_000_000)
    assert "scanning a.jsonl:  50% (500 of 1,000 MB)" in stream.getvalue()
    progress.done()
    assert stream.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    Progress(quiet, enabled=False).update("a.jsonl", 1, 2)
    assert quiet.getvalue() == ""


def test_long_scan_reports_progress_through_the_file(tmp_path):
    """A scan updates its progress as it goes, in bytes of the file, and clears it at the end."""
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(record(seq) for seq in range(1, 101)))
    stream = io.StringIO()
    clock = iter(range(1000))
    scan = Scan(
        [str(path)], Progress(stream, enabled=True, clock=lambda: float(next(clock))), every=10
    )
    assert sum(1 for _ in scan) == 100
    shown = [part for part in stream.getvalue().split("\r") if part.startswith(f"scanning {path}:")]
    percents = [int(part.split(":")[-1].split("%")[0]) for part in shown]
    assert (
        len(percents) == 10
        and percents == sorted(percents)
        and 5 <= percents[0] < percents[-1] <= 100
    )
    assert stream.getvalue().endswith("\r\x1b[K")


def test_last_record_reads_the_end_of_a_file_only(tmp_path):
    """The writer's resume point: the last complete record, and whether the file ends mid-line."""
    path = tmp_path / "audit.jsonl"
    path.write_text(record(1) + record(2) + '{"torn')
    found, torn = audit_files.last_record(str(path), window=16)
    assert found is not None and found["seq"] == 2 and torn is True
    assert audit_files.last_record(str(tmp_path / "none")) == (None, False)


class Script:
    """A `sleep` for `follow` that performs the next scripted change instead of waiting."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)

    def __call__(self, seconds: float) -> None:
        if not self.steps:
            raise KeyboardInterrupt  # the test is over: stop like Ctrl-C would
        self.steps.pop(0)()


def test_follow_yields_new_lines_and_survives_rotation(tmp_path):
    """Lines appended later, then a rename + new file (logrotate create), then a truncation."""
    path = tmp_path / "audit.jsonl"
    path.write_text(record(1))
    scan = Scan([str(path)], Progress(enabled=False))
    list(scan)

    def append(text: str) -> None:
        with open(path, "a") as handle:
            handle.write(text)

    def rotate() -> None:
        path.rename(tmp_path / "audit.jsonl.1")
        path.write_text(record(3))

    def truncate() -> None:
        path.write_text("")  # logrotate copytruncate

    script = Script(
        lambda: append(record(2)[:10]),
        lambda: append(record(2)[10:]),
        rotate,
        truncate,
        lambda: append(record(4)),
    )
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for _, number, text in audit_files.follow(
            str(path), scan.positions[str(path)], sleep=script
        ):
            seen.append((number, json.loads(text)["seq"]))
    assert seen == [(2, 2), (1, 3), (1, 4)]


def test_follow_waits_for_a_file_that_is_not_there_yet(tmp_path):
    """Right after rotation the current file may not exist: follow waits for it."""
    path = tmp_path / "audit.jsonl"
    script = Script(lambda: path.write_text(record(1)))
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for _, _, text in audit_files.follow(str(path), None, sleep=script):
            seen.append(json.loads(text)["seq"])
    assert seen == [1]
    assert not os.path.exists(str(path) + ".chain")
