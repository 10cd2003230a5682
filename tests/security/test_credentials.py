"""Class 5, credentials: never before TLS, never logged, one AUTH per connection, safe files.

The upstream password is a known string, so every output mailgate produces can
be searched for it: in plain text, as base64 of the password alone (at each of
the three byte alignments it can take inside a longer base64 text), and as the
base64 ``\\0user\\0password`` blob of AUTH PLAIN.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess
import sys

import pytest

from gateway.cli import main as cli
from gateway.testing.configfile import to_toml
from tests.conftest import PASSWORD, USER, relay_all, upstream_table
from tests.security.conftest import try_recipient
from tests.security.scripted_upstream import Script, ScriptedUpstream

BODY = b"Subject: credentials\r\n\r\nbody\r\n"


def leak_forms(password: str = PASSWORD, user: str = USER) -> dict[str, bytes]:
    """Every form in which the password could show up in a log."""
    secret = password.encode()
    forms = {
        "plain": secret,
        "plain-blob": base64.b64encode(b"\0" + user.encode() + b"\0" + secret),
    }
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret)
        # Drop the characters that mix in the padding bytes or the tail: the rest is fixed.
        start = (offset * 4 + 2) // 3
        end = (len(secret) + offset) // 3 * 4
        forms[f"base64@{offset}"] = encoded[start:end]
    return forms


def assert_no_leak(text: bytes, where: str) -> None:
    for form, needle in leak_forms().items():
        assert needle not in text, f"password ({form}) found in {where}"


def test_leak_forms_find_the_password_in_base64():
    """The base64 needles match the password inside any longer base64 text (the search cannot miss it)."""
    for prefix in (b"", b"a", b"ab", b"abc", b"user\0"):
        encoded = base64.b64encode(prefix + PASSWORD.encode() + b"tail")
        assert any(
            needle in encoded for form, needle in leak_forms().items() if form.startswith("base64")
        )


# --- never before TLS -------------------------------------------------------------------


@pytest.mark.parametrize(
    "script,reason",
    [
        (Script(capabilities_plain=("AUTH PLAIN LOGIN",)), "STARTTLS not offered"),
        (
            Script(
                capabilities_plain=("STARTTLS", "AUTH PLAIN LOGIN"),
                starttls_reply=b"454 4.7.0 TLS not available\r\n",
            ),
            "STARTTLS refused",
        ),
    ],
    ids=["starttls-not-offered", "starttls-refused"],
)
def test_password_never_sent_in_cleartext(script, reason, scripted, start_gateway, ca):
    """Prevents AUTH in cleartext to an upstream that offers AUTH but not (working) STARTTLS."""
    upstream = scripted(script)
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    code, text = try_recipient(gw.port)
    assert code == 451 and text.startswith(b"4.7.10")
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert connection.handshake is None
    assert not connection.saw_auth and not connection.saw_mail
    assert_no_leak(bytes(connection.raw), "the cleartext upstream stream")
    [result] = gw.audit.wait_for("message.result")
    assert result["outcome"] == "deferred" and reason in result["upstream_error"]


# --- one AUTH attempt per connection -------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_one_auth_attempt_per_connection_after_535(mechanism, scripted, start_gateway, ca):
    """Prevents retrying a refused password (account lock-out, password spraying) on one connection."""
    upstream = scripted(
        capabilities_tls=(f"AUTH {mechanism}",),
        auth_reply=b"535 5.7.8 Authentication credentials invalid\r\n",
    )
    gw = start_gateway(relay_all(upstream_table(upstream, ca.ca_file)))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        first = client.rcpt("a@example.net")
        second = client.rcpt("b@example.net")
    assert first[0] == second[0] == 451 and first[1].startswith(b"4.7.0")
    gw.stop()  # a session kept in the pool ends with the gateway's QUIT
    [connection] = upstream.wait_closed()
    assert len(upstream.connections) == 1
    tls_verbs = connection.commands("tls")
    assert tls_verbs.count(b"AUTH") == 1
    assert tls_verbs.index(b"AUTH") > tls_verbs.index(b"EHLO") and b"MAIL" not in tls_verbs


# --- never in the audit or the log of `mailgate run` ------------------------------------------


def dead_port() -> int:
    with socket.socket() as probe:  # free a moment ago, nothing listening now
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_message(port: int) -> None:
    """As an app: one complete attempt, whatever the gateway answers."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail("app@example.com")
        if client.rcpt("ops@example.net")[0] == 250:
            client.data(BODY)


@pytest.mark.parametrize(
    "case",
    [
        "relayed",
        "auth-refused",
        "unreachable",
        "tls-failure",
        "auth-refused-echoed",
    ],
)
def test_password_never_in_audit_or_log(case, scripted, mailgate_run, ca, tmp_path):
    """Prevents the password (plain or base64) reaching stdout (audit) or stderr of `mailgate run`."""
    from gateway.testing.pki import ThrowawayCA

    upstream: ScriptedUpstream | None = None
    if case == "relayed":
        upstream = scripted()
    elif case.startswith("auth-refused"):
        upstream = scripted(
            auth_reply=b"535 5.7.8 Authentication credentials invalid\r\n",
            echo_auth=case.endswith("echoed"),
        )
    elif case == "tls-failure":
        upstream = scripted(
            context=ThrowawayCA(str(tmp_path)).issue("stranger", "localhost").server_context()
        )
    if upstream is None:  # unreachable
        table = {
            "host": "127.0.0.1",
            "port": dead_port(),
            "username": USER,
            "password_env": "MAILGATE_TEST_PASSWORD",
            "ca_file": ca.ca_file,
            "connect_timeout": 5,
        }
    else:
        table = upstream_table(upstream, ca.ca_file)
    document = relay_all(table)
    document["audit"] = {"path": "-"}
    gateway = mailgate_run(document)
    one_message(gateway.port)
    result = gateway.wait_for(gateway.stdout, b'"event":"message.result"')
    assert (b'"outcome":"relayed"' in result) == (case == "relayed")
    gateway.wait_for(gateway.stdout, b'"event":"session.closed"')
    _, stdout, stderr = gateway.stop()
    if upstream is not None and case != "tls-failure":  # the password really was used
        assert upstream.wait_closed()[0].saw_auth
    assert_no_leak(stdout, "the audit (stdout)")
    assert_no_leak(stderr, "the log (stderr)")


# --- secret files --------------------------------------------------------------------------


def config_with_password_file(tmp_path, mode: int) -> tuple[str, str]:
    secret = tmp_path / "upstream.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(mode)
    document = relay_all(
        {"host": "localhost", "port": 587, "username": USER, "password_file": str(secret)}
    )
    config = tmp_path / "mailgate.toml"
    config.write_text(to_toml(document))
    return str(config), str(secret)


@pytest.mark.parametrize("mode", [0o640, 0o604], ids=["group-readable", "world-readable"])
def test_check_refuses_password_file_readable_by_others(mode, tmp_path, capsys):
    """Prevents `mailgate check` passing a password file other local users can read."""
    config, secret = config_with_password_file(tmp_path, mode)
    assert cli.main(["check", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert secret in err and "group or others" in err and f"{mode:04o}" in err
    assert_no_leak((out + err).encode(), "mailgate check output")


@pytest.mark.parametrize("mode", [0o640, 0o604], ids=["group-readable", "world-readable"])
def test_run_refuses_password_file_readable_by_others(mode, tmp_path):
    """Prevents `mailgate run` starting with a password file other local users can read."""
    config, secret = config_with_password_file(tmp_path, mode)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", config],
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert secret.encode() in done.stderr and b"group or others" in done.stderr
    assert b"Traceback" not in done.stderr
    assert_no_leak(done.stdout + done.stderr, "mailgate run output")


def test_check_accepts_owner_only_password_file(tmp_path, capsys):
    """The control for the two tests above: a 0600 password file passes `mailgate check`."""
    config, _ = config_with_password_file(tmp_path, 0o600)
    assert cli.main(["check", "--config", config]) == 0
    assert_no_leak("".join(capsys.readouterr()).encode(), "mailgate check output")


def test_inline_password_is_refused_without_echoing_it(tmp_path, capsys):
    """Prevents a password written into the config file itself: only environment or files are accepted."""
    document = relay_all({"host": "localhost", "port": 587, "username": USER, "password": PASSWORD})
    config = tmp_path / "mailgate.toml"
    config.write_text(to_toml(document))
    assert cli.main(["check", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "upstreams.up.password" in err and str(config) in err
    assert_no_leak((out + err).encode(), "mailgate check output")
