"""Helpers for the store-and-forward tests: queue configs, an upstream that can go down and come back,
an app that sends numbered messages, and `mailgate run` as a real process."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import IO, Any

from gateway.testing.pki import ServerCert
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
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: queued {number}\r\n"
            f"Message-ID: <q{number}@example.com>\r\n\r\n.dot line {number}\r\nbody {number}\r\n").encode()


def send(port: int, body: bytes, rcpts: list[str] | None = None, sender: str = "app@example.com"
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


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_toml(document: dict[str, Any], path: str) -> None:
    lines = []
    for section, table in document.items():
        if section == "rules":
            for rule in table:
                lines.append("[[rules]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in rule.items()]
        elif section == "upstreams":
            for name, upstream in table.items():
                lines.append(f"[upstreams.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in upstream.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


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


class GatewayProcess:
    """``python -m gateway run --config FILE`` as a child process."""

    def __init__(self, config_path: str, cwd: str) -> None:
        env = dict(os.environ, MAILGATE_TEST_PASSWORD=PASSWORD)
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", config_path],
                                        cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr: IO[bytes] = self.process.stderr  # type: ignore[assignment]
        line = stderr.readline().decode()
        if "listening on" not in line:
            self.process.kill()
            raise RuntimeError(f"gateway did not start: {line}{stderr.read().decode()}")
        self.port = int(line.rsplit(":", 1)[1])
        self._drain = threading.Thread(target=stderr.read, daemon=True)
        self._drain.start()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def queue_command(config_path: str, cwd: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "queue", *args, "--config", config_path],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
