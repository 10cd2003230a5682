"""Live reload (SIGHUP) and audit reopening (SIGUSR1) on a real `mailgate run` process,
and `Gateway.reload` in-process for what a reload refuses."""

from __future__ import annotations

import copy
import json
import signal
import smtplib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import threads

from gateway.audit.log import AuditLog
from gateway.config.toml import parse
from gateway.errors import ConfigError
from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess, clean_env
from tests.conftest import PASSWORD, relay_all, upstream_table

BLOCK_RULE = {"name": "blocked", "recipients": ["*@blocked.example"], "action": "reject"}


def write_config(
    path: Path,
    upstream: Any,
    ca_file: str,
    audit: Path,
    *,
    first_rules: tuple[dict[str, Any], ...] = (),
    action: str = "relay",
) -> Path:
    """Relay everything to `upstream` (rule "all" with `action`), after `first_rules`."""
    document = relay_all(upstream_table(upstream, ca_file), shutdown_grace=10)
    document["audit"] = {"path": str(audit)}
    document["rules"] = [*first_rules, {"name": "all", "action": action, "upstream": "up"}]
    return Path(write_toml(document, str(path)))


class Daemon(MailgateProcess):
    """`mailgate run --config FILE`, with its stderr read in order through `expect`."""

    def __init__(self, config: Path) -> None:
        super().__init__(
            "run", "--config", str(config), env=clean_env(MAILGATE_TEST_PASSWORD=PASSWORD)
        )
        self._cursor = 0
        self.expect("listening on")

    def expect(self, text: str, timeout: float = 30) -> str:
        """The next stderr line containing `text`, after the one the last call returned."""
        line = self.wait_for(self.stderr, text.encode(), timeout, after=self._cursor)
        self._cursor = self.stderr.index(line, self._cursor) + 1
        return line.decode().rstrip("\n")

    @property
    def seen(self) -> list[str]:
        return [line.decode().rstrip("\n") for line in self.stderr[: self._cursor]]


@pytest.fixture
def daemon():
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        started.append(Daemon(config))
        return started[-1]

    yield start
    for process in started:
        assert process.stop()[0] == 0


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == name]


def open_session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("app.test")
    return client


def send(port: int, rcpt: str = "ops@example.net") -> int:
    with open_session(port) as client:
        client.mail("app@example.com")
        code, _ = client.rcpt(rcpt)
        if code != 250:
            return code
        return client.data(b"Subject: after\r\n\r\nbody\r\n")[0]


def test_sighup_under_load_drops_no_session(make_upstream, ca, tmp_path, daemon):
    """Sessions mid-body finish under the old rules after SIGHUP; open sessions before MAIL and
    new ones get the new rules from their next transaction (issue 12 item 14)."""
    upstream = make_upstream()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "mailgate.toml", upstream, ca.ca_file, audit)
    mailgate = daemon(config)

    mid_body = [open_session(mailgate.port) for _ in range(4)]
    for client in mid_body:
        client.mail("app@example.com")
        assert client.rcpt("ops@example.net")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(b"Subject: in flight\r\n")
    before_mail = [open_session(mailgate.port) for _ in range(2)]

    write_config(config, upstream, ca.ca_file, audit, first_rules=(BLOCK_RULE,))
    mailgate.signal(signal.SIGHUP)
    mailgate.expect("reloaded configuration")

    for client in mid_body:
        client.send(b"\r\nbody\r\n.\r\n")
        assert client.getreply()[0] == 250
        client.quit()
    for client in before_mail:  # opened under the old rules: their next MAIL takes the new ones
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("x@blocked.example")[0] == 550
        assert client.rcpt("ops@example.net")[0] == 250
        assert client.data(b"Subject: new rules\r\n\r\nbody\r\n")[0] == 250
        client.quit()
    assert send(mailgate.port, "x@blocked.example") == 550  # a new session: the new rules
    assert len(upstream.wait_for(6)) == 6
    [reloaded] = events(audit, "config.reloaded")
    assert reloaded["rules"] == 2


def test_invalid_config_on_sighup_is_refused_and_the_old_one_kept(
    make_upstream, ca, tmp_path, daemon
):
    """A broken file on SIGHUP: its problems on stderr and in the audit; mail still flows on the old config."""
    upstream = make_upstream()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "mailgate.toml", upstream, ca.ca_file, audit)
    mailgate = daemon(config)

    write_config(config, upstream, ca.ca_file, audit, action="bounce")
    mailgate.signal(signal.SIGHUP)
    mailgate.expect("reload refused")
    assert any("rules[0].action" in line and "bounce" in line for line in mailgate.seen)
    [failed] = events(audit, "config.reload_failed")
    assert any("rules[0].action" in problem for problem in failed["problems"])
    assert send(mailgate.port) == 250
    upstream.wait_for(1)


@pytest.mark.skipif(
    not hasattr(AuditLog, "reopen"), reason="AuditLog.reopen() comes with the audit-review branch"
)
def test_sigusr1_reopens_the_audit_file(make_upstream, ca, tmp_path, daemon):
    """After logrotate's rename and SIGUSR1, new events go to a new file at the configured path."""
    upstream = make_upstream()
    audit = tmp_path / "audit.jsonl"
    mailgate = daemon(write_config(tmp_path / "mailgate.toml", upstream, ca.ca_file, audit))
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    mailgate.signal(signal.SIGUSR1)
    mailgate.expect("reopened the audit file")
    assert send(mailgate.port) == 250
    assert len(events(audit, "message.result")) == 1
    assert events(rotated, "message.result") == [] and events(rotated, "gateway.started")


# --- in-process: what Gateway.reload refuses ------------------------------------------------


def reload(gw: Any, document: dict[str, Any]) -> None:
    new = parse(copy.deepcopy(document), "new.toml")
    threads.blockingCallFromThread(gw.reactor, gw.gateway.reload, new)


def test_reload_refuses_a_new_listen_address(make_upstream, start_gateway, ca):
    """listener.listen cannot change on reload: refused by key, audited, the old config stays."""
    document = relay_all(upstream_table(make_upstream(), ca.ca_file))
    gw = start_gateway(document)
    running = gw.gateway.config
    changed = copy.deepcopy(document)
    changed["listener"]["listen"] = "127.0.0.1:2"
    with pytest.raises(ConfigError) as refused:
        reload(gw, changed)
    assert [p.key for p in refused.value.problems] == ["listener.listen"]
    assert gw.gateway.config is running
    [failed] = gw.audit.named("config.reload_failed")
    assert "listener.listen" in failed["problems"][0]


def test_reload_rereads_secrets_and_refuses_a_missing_one(
    make_upstream, start_gateway, ca, monkeypatch
):
    """Secrets are read again on reload; one that is gone refuses the reload and names its key, not its value."""
    document = relay_all(upstream_table(make_upstream(), ca.ca_file))
    gw = start_gateway(document)
    monkeypatch.delenv("MAILGATE_TEST_PASSWORD")
    with pytest.raises(ConfigError) as refused:
        reload(gw, document)
    [problem] = refused.value.problems
    assert problem.key == "upstreams.up.password_env" and "MAILGATE_TEST_PASSWORD" in problem.found
    assert PASSWORD not in gw.audit.text


def test_reload_applies_new_rules_to_new_sessions(make_upstream, start_gateway, ca):
    """After a reload, a new session is judged by the new rules, and config.reloaded is audited."""
    document = relay_all(upstream_table(make_upstream(), ca.ca_file))
    gw = start_gateway(document)
    assert send(gw.port, "x@blocked.example") == 250
    changed = copy.deepcopy(document)
    changed["rules"].insert(
        0, {"name": "blocked", "recipients": ["*@blocked.example"], "action": "reject"}
    )
    reload(gw, changed)
    assert send(gw.port, "x@blocked.example") == 550
    assert gw.audit.named("config.reloaded")[0]["rules"] == 2
