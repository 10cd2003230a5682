"""`mailgate audit` over several instances' files: merged in time order, each file its own chain."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog, _order
from gateway.cli.main import main
from gateway.testing import audit_sample

START = dt.datetime(2026, 11, 27, 20, tzinfo=dt.UTC)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_in_time_order(log: AuditLog, count: int, seed: int) -> None:
    """The sample's sessions, each event sealed in time order, as a live writer writes them."""
    events = [e for session in audit_sample.sessions(count, START, seed) for e in session]
    for event in sorted(events, key=lambda e: e["timestamp"]):
        event["timestamp"] = event["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event["instance"] = log.instance
        log._sink.msg(_order(None, "info", event))


@pytest.fixture
def instances(tmp_path: Path) -> tuple[Path, Path]:
    """Two instances' audit files (a/audit.jsonl, b/audit.jsonl) over the same hour."""
    paths = []
    for name, seed in (("a", 11), ("b", 12)):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "audit.jsonl"
        log = AuditLog(str(path), instance=f"mailgate-{name}")
        write_in_time_order(log, 20, seed)
        log.close()
        paths.append(path)
    return paths[0], paths[1]


def test_every_event_names_its_instance(tmp_path):
    """An event carries `instance`: the one given, or by default the host's name."""
    import socket

    named = AuditLog(str(tmp_path / "named.jsonl"), instance="mailgate-2")
    default = AuditLog(str(tmp_path / "default.jsonl"))
    for log in (named, default):
        log.event(audit_sample.Event.GATEWAY_STOPPED)
        log.close()
    [one] = [json.loads(x) for x in (tmp_path / "named.jsonl").read_text().splitlines()]
    [two] = [json.loads(x) for x in (tmp_path / "default.jsonl").read_text().splitlines()]
    assert one["instance"] == "mailgate-2" and two["instance"] == socket.gethostname()


def test_search_merges_two_instances_in_time_order(instances, capsys):
    """search over two instances' files prints every message of both, interleaved by time."""
    code, out, _ = cli(capsys, "audit", "search", "--json", *map(str, instances))
    records = [json.loads(line) for line in out.splitlines()]
    times = [r["timestamp"] for r in records]
    order = [r["instance"] for r in records]
    assert code == 0 and len(records) == 40 and times == sorted(times)
    assert order != sorted(order)  # interleaved, not one file after the other


def test_a_quoted_glob_names_every_instance(instances, capsys):
    """A glob the shell did not expand is expanded (chain state files left out)."""
    pattern = str(instances[0].parent.parent / "*" / "audit.jsonl*")
    code, out, _ = cli(capsys, "audit", "search", "--json", pattern)
    assert code == 0 and {json.loads(x)["instance"] for x in out.splitlines()} == {
        "mailgate-a",
        "mailgate-b",
    }


def test_summary_counts_both_instances(instances, capsys):
    """summary over two files counts the messages of both."""
    code, out, _ = cli(capsys, "audit", "summary", *map(str, instances))
    assert code == 0 and "40 message(s) in 40 session(s)" in out


def test_verify_checks_each_instance_chain(instances, capsys):
    """verify checks each file as its own chain, against its own state: both OK."""
    code, out, _ = cli(capsys, "audit", "verify", *map(str, instances))
    assert code == 0
    assert out.count("OK: 60 record(s) verified in 1 file(s) of ") == 2
    assert out.rstrip().endswith("OK: 2 chain(s) intact")


def test_verify_names_the_tampered_instance(instances, capsys):
    """An edited record in one instance's file fails that chain, named; the other stays OK."""
    a, b = instances
    lines = b.read_text().splitlines(keepends=True)
    target = next(n for n, line in enumerate(lines) if '"helo":"app.test"' in line)
    lines[target] = lines[target].replace('"helo":"app.test"', '"helo":"evil.test"')
    b.write_text("".join(lines))
    code, out, _ = cli(capsys, "audit", "verify", str(a), str(b))
    assert code == 1
    assert f"OK: 60 record(s) verified in 1 file(s) of {a}" in out
    assert "was edited after it was written" in out
    assert out.rstrip().endswith(f"FAILED: 1 of 2 chain(s) not intact: {b}")


def test_follow_over_two_instances_is_refused(instances, capsys):
    """--follow follows one current file: with two instances it says so (exit 2)."""
    code, _, err = cli(capsys, "audit", "search", "--follow", *map(str, instances))
    assert code == 2 and "--follow reads one instance's current file" in err
