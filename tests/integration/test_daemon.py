"""`mailgate run/check/explain` as a user runs them: real processes, exit codes, signals."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.testing.configfile import write_toml
from gateway.testing.process import MailgateProcess, clean_env
from gateway.testing.trace import without_trace
from tests.conftest import PASSWORD, USER, relay_all, upstream_table

MAILGATE = [sys.executable, "-m", "gateway"]


def mailgate(
    *args: str, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MAILGATE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
        **kwargs,
    )


def start_daemon(args: list[str], env: dict[str, str]) -> MailgateProcess:
    """`mailgate run ARGS` started and listening."""
    daemon = MailgateProcess("run", *args, env=env)
    assert daemon.port > 0
    return daemon


def write_config(tmp_path: Path, upstream, ca_file: str, **listener) -> Path:
    """A config file relaying everything to `upstream`, auditing to stdout."""
    document = relay_all(upstream_table(upstream, ca_file), shutdown_grace=10, **listener)
    document["audit"] = {"path": "-"}
    return Path(write_toml(document, str(tmp_path / "mailgate.toml")))


def test_run_without_config_or_upstream_exits_2():
    """No --config and no MAILGATE_UPSTREAM: exit status 2 and one line saying what to do."""
    result = mailgate("run")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "MAILGATE_UPSTREAM" in result.stderr


def test_run_from_environment_relays(make_upstream, ca):
    """The embedded default: MAILGATE_UPSTREAM + password variable, loopback listener."""
    upstream = make_upstream("implicit")
    env = clean_env(
        MAILGATE_UPSTREAM=f"smtps://{USER}@localhost:{upstream.port}",
        MAILGATE_UPSTREAM_PASSWORD=PASSWORD,
        MAILGATE_UPSTREAM_CA_FILE=ca.ca_file,
        MAILGATE_LISTEN="127.0.0.1:0",
    )
    daemon = start_daemon([], env)
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("app@example.com", ["ops@example.net"], b"Subject: env\r\n\r\nhi\r\n")
        upstream.wait_for(1)
    finally:
        code, out, _ = daemon.stop()
    assert code == 0
    assert b'"event":"message.result"' in out and b'"outcome":"relayed"' in out


def test_sigterm_lets_the_session_in_flight_finish(make_upstream, ca, tmp_path):
    """SIGTERM stops accepting, lets the open transaction complete, then exits 0."""
    upstream = make_upstream()
    env = clean_env(MAILGATE_TEST_PASSWORD=PASSWORD)
    daemon = start_daemon(["--config", str(write_config(tmp_path, upstream, ca.ca_file))], env)
    client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=30)
    client.ehlo()
    client.mail("app@example.com")
    assert client.rcpt("ops@example.net")[0] == 250
    daemon.terminate()
    assert client.data(b"Subject: in flight\r\n\r\nstill delivered\r\n")[0] == 250
    client.quit()
    code, out, _ = daemon.stop()
    assert code == 0
    assert len(upstream.wait_for(1)) == 1
    assert b'"event":"gateway.stopped"' in out
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", daemon.port, timeout=5)


def test_relays_20_mib_intact_with_bounded_memory(make_upstream, ca, tmp_path):
    """A 20 MiB message arrives byte for byte while the gateway's peak RSS grows far less than 20 MiB."""
    upstream = make_upstream()
    daemon = start_daemon(
        [
            "--config",
            str(write_config(tmp_path, upstream, ca.ca_file, max_message_size=64 * 2**20)),
        ],
        clean_env(MAILGATE_TEST_PASSWORD=PASSWORD),
    )
    try:
        line = b"0123456789" * 9 + b"abcdefg\r\n"  # 99 octets
        small = b"Subject: warm-up\r\n\r\n" + line * 100
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
            client.sendmail("app@example.com", ["ops@example.net"], small)
        upstream.wait_for(1)
        baseline = daemon.peak_rss_kib()
        body = b"Subject: big\r\n\r\n" + line * (20 * 2**20 // len(line) + 1)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=120) as client:
            client.sendmail("app@example.com", ["ops@example.net"], body)
        messages = upstream.wait_for(2, timeout=120)
        growth_kib = daemon.peak_rss_kib() - baseline
    finally:
        daemon.stop()
    assert without_trace(messages[1].content) == body
    assert len(body) > 20 * 2**20
    assert growth_kib < 8 * 1024, f"peak RSS grew by {growth_kib} KiB while relaying 20 MiB"


def test_check_reports_every_problem_at_once(tmp_path):
    """`mailgate check` names file, key, found and expected for each problem, and exits 1."""
    path = tmp_path / "bad.toml"
    path.write_text(
        textwrap.dedent("""\
        [listener]
        listen = "nowhere"
        max_recipients = "lots"

        [upstreams.p]
        host = "smtp.example.com"
        port = 70000
        tls = "plaintext"

        [[rules]]
        action = "relay"
        upstream = "missing"
        """)
    )
    result = mailgate("check", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for key in (
        "listener.listen",
        "listener.max_recipients",
        "upstreams.p.port",
        "upstreams.p.tls",
        "rules[0].upstream",
    ):
        assert any(
            line.startswith(f"{path}: {key}: found ") and "expected" in line for line in lines
        ), key


def test_check_accepts_a_valid_file(tmp_path, ca):
    """A valid config passes `mailgate check` with exit 0."""

    class Up:
        port, tls = 587, "starttls"

    path = write_config(tmp_path, Up, ca.ca_file)
    result = mailgate("check", "--config", str(path), env=clean_env(MAILGATE_TEST_PASSWORD="x"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_reports_a_missing_secret(tmp_path, ca):
    """A password variable that is not set is a problem for `check`, named without any value."""

    class Up:
        port, tls = 587, "starttls"

    result = mailgate("check", "--config", str(write_config(tmp_path, Up, ca.ca_file)))
    assert result.returncode == 1
    assert "MAILGATE_TEST_PASSWORD" in result.stderr


def test_explain_prints_rule_action_and_upstream_per_recipient(tmp_path):
    """`mailgate explain` shows, per recipient, the matching rule, the action and the upstream."""
    path = tmp_path / "p.toml"
    path.write_text(
        textwrap.dedent("""\
        [upstreams.billing]
        host = "smtp.example.com"
        port = 465
        [[rules]]
        name = "no-freemail"
        recipients = ["*@gmail.com"]
        action = "reject"
        [[rules]]
        name = "billing"
        clients = ["10.1.0.0/16"]
        senders = ["*@billing.example.com"]
        action = "relay"
        upstream = "billing"
        """)
    )
    result = mailgate(
        "explain",
        "--config",
        str(path),
        "--client",
        "10.1.2.3",
        "--from",
        "invoices@billing.example.com",
        "--to",
        "a@customer.example",
        "--to",
        "b@gmail.com",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "<a@customer.example>: rule 'billing' -> relay via upstream 'billing' (smtp.example.com:465, tls=implicit"
        in out
    )
    assert "<b@gmail.com>: rule 'no-freemail' -> reject: 550 5.7.1" in out
    other = mailgate(
        "explain",
        "--config",
        str(path),
        "--client",
        "192.0.2.1",
        "--from",
        "x@y.example",
        "--to",
        "a@customer.example",
    )
    assert "DENIED" in other.stdout  # not in the default allowed_clients (loopback)


def test_explain_shows_each_upstreams_pace_and_budget(tmp_path):
    """`mailgate explain` names each upstream's budget and the identity it is counted for."""
    path = tmp_path / "p.toml"
    path.write_text(
        textwrap.dedent("""\
        [upstreams.m365]
        provider = "m365"
        username = "app@example.com"
        password_env = "PW"
        [upstreams.backup]
        host = "smtp.example.net"
        [[rules]]
        name = "all"
        action = "relay"
        upstream = ["m365", "backup"]
        """)
    )
    result = mailgate(
        "explain",
        "--config",
        str(path),
        "--client",
        "127.0.0.1",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "m365: budget pace 30/minute, max_recipients_per_day 10000, "
        "max_connections_per_identity 3, max_connections 10 "
        "for app@example.com" in result.stdout
    )
    assert "backup: no provider budget" in result.stdout
