"""Helpers for the store-and-forward tests: queue configs, an upstream that can go down and come back,
an app that sends numbered messages, and `mailgate run` as a real process."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from gateway.testing.pki import ServerCert
from gateway.testing.process import MailgateProcess
from gateway.testing.submission import SubmissionServer
from tests.conftest import PASSWORD, USER, upstream_table


def queue_document(upstream: dict[str, Any], spool: str, **queue: Any) -> dict[str, Any]:
    """A config document: loopback listener, every recipient queued for `upstream`."""
    return {
        "listener": {"listen": "127.0.0.1:0", "hostname": "mailgate.test", "shutdown_grace": 2},
        "queue": {"path": spool, "min_backoff": 1, "max_backoff": 2, **queue},
        "upstreams": {"up": upstream},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }


def message(number: int, sender: str = "app@example.com", to: str = "ops@example.net") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: queued {number}\r\n"
        f"Message-ID: <q{number}@example.com>\r\n\r\n.dot line {number}\r\nbody {number}\r\n"
    ).encode()


def send(
    port: int, body: bytes, rcpts: list[str] | None = None, sender: str = "app@example.com"
) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        client.mail(sender)
        for rcpt in rcpts or ["ops@example.net"]:
            code, text = client.rcpt(rcpt)
            assert code == 250, (code, text)
        return client.data(body)


def send_many(port: int, numbers: range) -> list[tuple[int, bytes]]:
    """Send one message per number over one connection; every final reply."""
    answers = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        for number in numbers:
            client.mail("app@example.com")
            client.rcpt("ops@example.net")
            answers.append(client.data(message(number)))
    return answers


class Upstream:
    """An aiosmtpd upstream on a fixed port that can be stopped and brought back."""

    def __init__(self, cert: ServerCert, tls: str = "starttls") -> None:
        self.cert = cert
        self.tls = tls
        self.server: SubmissionServer | None = None
        self.port = self.up()
        self.received: list[Any] = []

    def up(self, port: int = 0) -> int:
        self.server = SubmissionServer(self.tls, self.cert.server_context(), {USER: PASSWORD})
        return self.server.start(port)

    def down(self) -> None:
        if self.server is not None:
            self.received.extend(self.server.messages)
            self.server.stop()
            self.server = None

    def back(self) -> SubmissionServer:
        self.up(self.port)
        assert self.server is not None
        return self.server

    def table(self, ca_file: str, **overrides: Any) -> dict[str, Any]:
        where = SimpleNamespace(port=self.port, tls=self.tls)
        return upstream_table(where, ca_file, **overrides)  # type: ignore[arg-type]


class AuditFile:
    """The audit log of a gateway process, read as events."""

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def events(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as handle:
            return [json.loads(line) for line in handle if line.endswith("\n")]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


def start_gateway_process(config_path: str, cwd: str) -> MailgateProcess:
    """``python -m gateway run --config FILE`` as a child process, once it listens."""
    process = MailgateProcess(
        "run",
        "--config",
        config_path,
        cwd=cwd,
        env=dict(os.environ, MAILGATE_TEST_PASSWORD=PASSWORD),
    )
    assert process.port > 0
    return process


def queue_command(config_path: str, cwd: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "queue", *args, "--config", config_path],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
