"""Fixtures for the security tests: a scripted upstream, and an app session helper."""

from __future__ import annotations

import os
import smtplib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.testing.configfile import to_toml
from gateway.testing.pki import ServerCert
from gateway.testing.process import MailgateProcess
from tests.conftest import PASSWORD
from tests.security.scripted_upstream import Script, ScriptedUpstream


@pytest.fixture
def scripted(server_cert: ServerCert) -> Iterator[Callable[..., ScriptedUpstream]]:
    """Start `ScriptedUpstream`s (TLS with the session's trustme certificate unless told)."""
    servers: list[ScriptedUpstream] = []

    def make(script: Script | None = None, context: Any = None, **fields: Any) -> ScriptedUpstream:
        script = script or Script(**fields)
        server = ScriptedUpstream(script, context or server_cert.server_context()).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def try_recipient(
    port: int, recipient: str = "ops@example.net", sender: str = "app@example.com"
) -> tuple[int, bytes]:
    """As an app: EHLO, MAIL, RCPT; return the reply to RCPT (where upstream failures show)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.mail(sender)[0] == 250
        return client.rcpt(recipient)


@pytest.fixture
def mailgate_run(tmp_path: Any) -> Iterator[Callable[[dict[str, Any]], MailgateProcess]]:
    """Run `mailgate run` on a config document; yields a starter, stops the process at the end."""
    processes: list[MailgateProcess] = []

    def start(document: dict[str, Any]) -> MailgateProcess:
        path = tmp_path / "mailgate.toml"
        path.write_text(to_toml(document))
        env = {**os.environ, "MAILGATE_TEST_PASSWORD": PASSWORD}
        process = MailgateProcess("run", "--config", str(path), env=env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()
