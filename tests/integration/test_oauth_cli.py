"""``mailgate oauth test`` as an operator runs it: a subprocess against local OAuth peers."""
# ruff: noqa: F811 - the OAuth peers are fixtures shared with test_xoauth2

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.integration.test_xoauth2 import (  # noqa: F401 - fixtures
    CLIENT_SECRET,
    MAILBOX,
    make_oauth_upstream,
    token_server,
)


def write_config(path: Any, table: dict[str, Any]) -> str:
    lines = ["[upstreams.m365]"] + [
        f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}"
        for key, value in table.items()
    ]
    lines += ["", "[[rules]]", 'name = "all"', 'action = "relay"', 'upstream = "m365"', ""]
    path.write_text("\n".join(lines))
    return str(path)


def run(config: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MAILGATE_TEST_CLIENT_SECRET=CLIENT_SECRET)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "oauth",
            "test",
            "--config",
            config,
            "--upstream",
            "m365",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def table(upstream: Any, tokens: Any, ca_file: str) -> dict[str, Any]:
    return {
        "provider": "m365",
        "host": "localhost",
        "port": upstream.port,
        "ca_file": ca_file,
        "auth": "xoauth2",
        "username": MAILBOX,
        "oauth_token_url": tokens.url,
        "oauth_client_id": "app-id-1234",
        "oauth_client_secret_env": "MAILGATE_TEST_CLIENT_SECRET",
        "oauth_ca_file": ca_file,
        "connect_timeout": 5,
        "command_timeout": 10,
    }


def test_reports_each_step_and_sends_no_mail(token_server, make_oauth_upstream, ca, tmp_path):
    """A working set-up: token, connect+TLS+AUTH and QUIT each reported OK; exit 0; no token printed."""
    upstream = make_oauth_upstream(token_server)
    result = run(write_config(tmp_path / "m.toml", table(upstream, token_server, ca.ca_file)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"1. token: OK from {token_server.url} (client app-id-1234")
    assert (
        lines[2].startswith("2. connect, TLS, AUTH: OK: TLSv1.")
        and f"XOAUTH2 as {MAILBOX}" in lines[2]
    )
    assert lines[3] == "3. QUIT: done; no mail was sent"
    assert upstream.messages == [] and len(token_server.requests) == 1
    assert all(token not in result.stdout + result.stderr for token in token_server.issued)


def test_token_endpoint_error_stops_at_step_one(token_server, make_oauth_upstream, ca, tmp_path):
    """An endpoint refusal is shown with its error code and description; exit 1; upstream not contacted."""
    token_server.script.error = (
        400,
        {
            "error": "unauthorized_client",
            "error_description": "AADSTS700016: Application not found",
        },
    )
    upstream = make_oauth_upstream(token_server)
    result = run(write_config(tmp_path / "m.toml", table(upstream, token_server, ca.ca_file)))
    assert result.returncode == 1
    assert "1. token: FAILED: token endpoint" in result.stdout
    assert "HTTP 400: unauthorized_client: AADSTS700016: Application not found" in result.stdout
    assert upstream.connections == 0


def test_refused_token_is_reported_at_step_two(token_server, make_oauth_upstream, ca, tmp_path):
    """A mailbox the upstream will not let the app use: step 2 fails with the upstream's reply."""
    upstream = make_oauth_upstream(token_server, mailboxes={"other@corp.example"})
    result = run(write_config(tmp_path / "m.toml", table(upstream, token_server, ca.ca_file)))
    assert result.returncode == 1
    assert (
        f"2. connect, TLS, AUTH: FAILED: m365: AUTH XOAUTH2 as {MAILBOX} refused" in result.stdout
    )
    assert "the upstream said: 535 5.7.8 Username and Password not accepted" in result.stdout


def test_missing_secret_is_a_one_line_error(token_server, make_oauth_upstream, ca, tmp_path):
    """An unset client secret variable: "mailgate: ..." naming the upstream and variable, exit 1."""
    upstream = make_oauth_upstream(token_server)
    config = table(upstream, token_server, ca.ca_file) | {
        "oauth_client_secret_env": "MAILGATE_TEST_UNSET"
    }
    result = run(write_config(tmp_path / "m.toml", config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "mailgate: upstreams.m365: environment variable MAILGATE_TEST_UNSET is not set or empty\n"
    )
