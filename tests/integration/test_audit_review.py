"""`mailgate audit` on the log of a real run: smtplib -> mailgate -> aiosmtpd over TLS, audit to a file.

One gateway run (module scope) relays three messages, has one refused by policy and
one deferred by the upstream, and writes its audit to a real file; each test then
reads that file (or a tampered copy) with `gateway.cli.main.main([...])`.
"""

from __future__ import annotations

import json
import shutil
import smtplib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import main
from gateway.config.toml import parse
from gateway.testing.submission import SubmissionServer
from tests.conftest import PASSWORD, USER, upstream_table

BODY = b"From: app@example.com\r\nTo: ops@example.net\r\nSubject: hi\r\nMessage-ID: <r1@example.com>\r\n\r\nhello\r\n"
SENDERS = ["app@example.com", "billing@example.com", "app@example.com"]


@dataclass(frozen=True)
class RunLog:
    path: Path
    sessions: dict[str, str]  # what happened -> session_id


def _send(port: int, sender: str, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail(sender)
        code, text = client.rcpt(recipient)
        if code == 250:
            return client.data(BODY)
        return code, text


class FileGateway:
    """A real gateway auditing to a real file (not CapturedAudit), started and stopped on demand."""

    def __init__(self, reactor: Any, upstream: SubmissionServer, ca_file: str, path: Path) -> None:
        self.reactor, self.path = reactor, path
        self.config = parse(
            {
                "listener": {
                    "listen": "127.0.0.1:0",
                    "hostname": "mailgate.test",
                    "shutdown_grace": 5,
                },
                "audit": {"path": str(path)},
                "upstreams": {"up": upstream_table(upstream, ca_file)},
                "rules": [
                    {"name": "blocked", "recipients": ["*@blocked.example"], "action": "reject"},
                    {"name": "all", "action": "relay", "upstream": "up"},
                ],
            },
            "test.toml",
        )

    def start(self) -> int:
        from twisted.internet import defer, threads

        from gateway.audit.log import AuditLog
        from gateway.daemon.gateway import Gateway

        def go() -> Any:
            self.gateway = Gateway(self.reactor, self.config, AuditLog(str(self.path)))
            return defer.Deferred.fromCoroutine(self.gateway.start())

        return int(threads.blockingCallFromThread(self.reactor, go))

    def reopen(self) -> bool:
        from twisted.internet import threads

        return bool(threads.blockingCallFromThread(self.reactor, self.gateway.audit.reopen))

    def stop(self) -> None:
        from twisted.internet import defer, threads

        threads.blockingCallFromThread(
            self.reactor, lambda: defer.Deferred.fromCoroutine(self.gateway.stop())
        )
        self.gateway.audit.close()


@pytest.fixture(scope="module")
def upstream(server_cert: Any) -> Any:
    server = SubmissionServer("starttls", server_cert.server_context(), {USER: PASSWORD})
    server.start()
    server.script.rcpt["busy@example.net"] = "450 4.2.1 mailbox busy, try later"
    patch = pytest.MonkeyPatch()
    patch.setenv("MAILGATE_TEST_PASSWORD", PASSWORD)
    yield server
    server.stop()
    patch.undo()


@pytest.fixture(scope="module")
def run_log(
    reactor: Any, ca: Any, upstream: Any, tmp_path_factory: pytest.TempPathFactory
) -> RunLog:
    path = tmp_path_factory.mktemp("audit-run") / "audit.jsonl"
    running = FileGateway(reactor, upstream, ca.ca_file, path)
    port = running.start()
    try:
        replies = [_send(port, sender, "ops@example.net") for sender in SENDERS]
        assert [code for code, _ in replies] == [250, 250, 250]
        assert _send(port, "app@example.com", "x@blocked.example")[0] == 550
        assert _send(port, "billing@example.com", "busy@example.net")[0] == 450
    finally:
        running.stop()
    results = [
        r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "message.result"
    ]
    assert [r["outcome"] for r in results] == [
        "relayed",
        "relayed",
        "relayed",
        "rejected",
        "deferred",
    ]
    sessions = {
        "relayed": results[0]["session_id"],
        "rejected": results[3]["session_id"],
        "deferred": results[4]["session_id"],
    }
    return RunLog(path, sessions)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tampered(run_log: RunLog, tmp_path: Path, change: Any) -> Path:
    lines = run_log.path.read_text().splitlines(keepends=True)
    copy = tmp_path / "audit.jsonl"
    copy.write_text("".join(change(lines)))
    return copy


# --- search --------------------------------------------------------------------------------------


def test_search_shows_one_aligned_row_per_message(run_log, capsys):
    """Five messages, five rows under a header, every column starting at the same place."""
    code, out, _ = cli(capsys, "audit", "search", str(run_log.path))
    header, *rows = out.splitlines()
    assert code == 0 and len(rows) == 5
    for title in (
        "time (UTC)",
        "session",
        "client",
        "sender",
        "recipients",
        "outcome",
        "upstream",
        "reply",
    ):
        assert title in header
    column = header.index("outcome")
    assert [row[column:].split()[0] for row in rows] == ["relayed"] * 3 + ["rejected", "deferred"]


def test_search_by_outcome(run_log, capsys):
    """--outcome deferred finds the one message the upstream deferred, with its reply."""
    code, out, _ = cli(capsys, "audit", "search", "--outcome", "deferred", str(run_log.path))
    rows = out.splitlines()[1:]
    assert code == 0 and len(rows) == 1 and "450 4.2.1 mailbox busy" in rows[0]


def test_search_by_sender_recipient_and_rule_as_json(run_log, capsys):
    """Filters combine; --json gives the matching records unchanged, one per line."""
    code, out, _ = cli(
        capsys,
        "audit",
        "search",
        "--json",
        "--sender",
        "APP@example.com",
        "--recipient",
        "*@example.net",
        "--rule",
        "all",
        str(run_log.path),
    )
    found = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(found) == 2
    assert {r["sender"] for r in found} == {"app@example.com"} and all(r["hash"] for r in found)


def test_search_by_rule_upstream_client_and_session(run_log, capsys):
    """--rule, --upstream, --client (a network) and --session each narrow the rows."""
    path = str(run_log.path)
    assert (
        len(cli(capsys, "audit", "search", "--json", "--rule", "blocked", path)[1].splitlines())
        == 1
    )
    assert (
        len(cli(capsys, "audit", "search", "--json", "--upstream", "up", path)[1].splitlines()) == 4
    )
    assert (
        len(
            cli(capsys, "audit", "search", "--json", "--client", "127.0.0.0/8", path)[
                1
            ].splitlines()
        )
        == 5
    )
    assert (
        len(
            cli(capsys, "audit", "search", "--json", "--client", "10.0.0.0/8", path)[1].splitlines()
        )
        == 0
    )
    session = run_log.sessions["rejected"]
    [only] = cli(capsys, "audit", "search", "--json", "--session", session, path)[1].splitlines()
    assert json.loads(only)["outcome"] == "rejected"


def test_search_time_window(run_log, capsys):
    """--since 1h includes this run; --until 1h excludes it."""
    path = str(run_log.path)
    assert len(cli(capsys, "audit", "search", "--json", "--since", "1h", path)[1].splitlines()) == 5
    assert cli(capsys, "audit", "search", "--json", "--until", "1h", path)[1] == ""


# --- show ----------------------------------------------------------------------------------------


def test_show_tells_a_session_from_open_to_close(run_log, capsys):
    """The rejected session: opened, its message.result with the refusal, closed."""
    session = run_log.sessions["rejected"]
    code, out, _ = cli(capsys, "audit", "show", session, str(run_log.path))
    events = [line.split()[2] for line in out.splitlines() if line[:2].isdigit()]
    assert code == 0 and events == ["session.opened", "message.result", "session.closed"]
    assert "x@blocked.example: rejected, 550 5.7.1" in out and "rule blocked" in out


def test_show_unknown_session_is_an_error(run_log, capsys):
    """A session id not in the files: exit 1 and one line saying so."""
    code, out, err = cli(capsys, "audit", "show", "ffffffffffffffff", str(run_log.path))
    assert code == 1 and out == ""
    assert err.strip() == f"mailgate: session ffffffffffffffff: not found in {run_log.path}"


# --- summary -------------------------------------------------------------------------------------


def test_summary_counts_outcomes_rules_upstreams_and_tls(run_log, capsys):
    """The terminal summary has each count from the run and bars beside them."""
    code, out, _ = cli(capsys, "audit", "summary", str(run_log.path))
    assert code == 0
    assert "5 message(s) in 5 session(s)" in out
    lines = out.splitlines()
    section = {
        title: lines[lines.index(title) + 1 : lines.index("", lines.index(title))]
        for title in ("by outcome", "by rule", "by upstream", "top senders", "top deferral reasons")
    }
    assert [line.split()[:2] for line in section["by outcome"]] == [
        ["relayed", "3"],
        ["rejected", "1"],
        ["deferred", "1"],
    ]
    assert [line.split()[:2] for line in section["by rule"]] == [["all", "4"], ["blocked", "1"]]
    assert ["up", "4"] in [line.split()[:2] for line in section["by upstream"]]
    assert section["top senders"][0].split()[:2] == ["app@example.com", "3"]
    assert "450 4.2.1 mailbox busy" in section["top deferral reasons"][0]
    assert any(
        line.split()[0].startswith("TLSv1.")
        for line in lines[lines.index("by TLS version") + 1 :][:2]
    )


def test_summary_html_is_one_self_contained_page(run_log, capsys, tmp_path):
    """--html writes a page with inline SVG charts and no external reference."""
    page = tmp_path / "summary.html"
    code, out, _ = cli(capsys, "audit", "summary", "--html", str(page), str(run_log.path))
    text = page.read_text()
    assert code == 0 and str(page) in out
    assert (
        text.count("<svg") == 2
        and "Messages over time, by outcome" in text
        and "by upstream" in text
    )
    for external in ("http://", "https://", "src=", "<link", "<script"):
        assert external not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


# --- verify --------------------------------------------------------------------------------------


def test_verify_accepts_the_log_of_a_real_run(run_log, capsys):
    """Untouched: exit 0 and the number of records verified."""
    total = len(run_log.path.read_text().splitlines())
    code, out, _ = cli(capsys, "audit", "verify", str(run_log.path))
    assert code == 0 and out.startswith(f"OK: {total} record(s) verified in 1 file(s)")


def test_verify_catches_a_deleted_line(run_log, capsys, tmp_path):
    """Line 4 removed: exit 1, and the break is reported at line 4 (the one after the gap)."""
    copy = tampered(run_log, tmp_path, lambda lines: lines[:3] + lines[4:])
    code, out, _ = cli(capsys, "audit", "verify", str(copy))
    assert code == 1 and out.startswith(f"{copy}:4: 1 record(s) missing before this line (seq 4)")


def test_verify_catches_an_edited_field(run_log, capsys, tmp_path):
    """A sender changed in a message.result: exit 1 and the line named."""

    def edit(lines: list[str]) -> list[str]:
        index = next(i for i, line in enumerate(lines) if '"sender":"billing@example.com"' in line)
        lines[index] = lines[index].replace("billing@example.com", "innocent@example.com")
        edit.line = index + 1  # type: ignore[attr-defined]
        return lines

    copy = tampered(run_log, tmp_path, edit)
    code, out, _ = cli(capsys, "audit", "verify", str(copy))
    assert code == 1 and out.startswith(f"{copy}:{edit.line}: content does not match its hash")  # type: ignore[attr-defined]


def test_verify_catches_an_inserted_line(run_log, capsys, tmp_path):
    """A forged message.result added by hand is named, and verify fails."""
    forged = json.dumps(
        {"timestamp": "2026-11-28T00:00:00Z", "event": "message.result", "outcome": "relayed"}
    )
    copy = tampered(run_log, tmp_path, lambda lines: lines[:5] + [forged + "\n"] + lines[5:])
    code, out, _ = cli(capsys, "audit", "verify", str(copy))
    assert code == 1 and out.startswith(f"{copy}:6: no valid seq/prev/hash at the end of the line")


def test_verify_catches_two_swapped_lines(run_log, capsys, tmp_path):
    """Lines 5 and 6 swapped: both named as out of order."""
    copy = tampered(run_log, tmp_path, lambda lines: lines[:4] + [lines[5], lines[4]] + lines[6:])
    code, out, _ = cli(capsys, "audit", "verify", str(copy))
    assert code == 1
    assert out.splitlines()[:2] == [
        f"{copy}:5: record seq 5 belongs before this line but was found later, at {copy}:6",
        f"{copy}:6: record seq 5 is out of order: it belongs before {copy}:5",
    ]


def test_verify_catches_lines_cut_from_the_end_with_the_state_file(run_log, capsys, tmp_path):
    """The last two records removed: the writer's PATH.chain says more was written."""
    copy = tampered(run_log, tmp_path, lambda lines: lines[:-2])
    shutil.copy(f"{run_log.path}.chain", f"{copy}.chain")
    code, out, _ = cli(capsys, "audit", "verify", str(copy))
    assert code == 1 and "2 record(s) cut from the end" in out


def test_chain_runs_across_a_restart_and_a_logrotate_reopen(
    reactor, ca, upstream, tmp_path, capsys
):
    """Run, stop, start again, rotate with reopen while running: verify --config sees one chain."""
    path = tmp_path / "audit.jsonl"
    running = FileGateway(reactor, upstream, ca.ca_file, path)
    port = running.start()
    assert _send(port, "app@example.com", "ops@example.net")[0] == 250
    running.stop()
    port = running.start()  # a restart: a new AuditLog on the same file
    assert _send(port, "app@example.com", "ops@example.net")[0] == 250
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate: rename, then SIGUSR1
    assert running.reopen() is True
    assert _send(port, "app@example.com", "ops@example.net")[0] == 250
    running.stop()
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[audit]\npath = "{path}"\n')
    code, out, _ = cli(capsys, "audit", "verify", "--config", str(config))
    assert code == 0 and "verified in 2 file(s), seq 1 to " in out
    code, out, _ = cli(capsys, "audit", "search", "--json", "--config", str(config))
    assert len(out.splitlines()) == 3
