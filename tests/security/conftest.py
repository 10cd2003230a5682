"""Fixtures for the security tests: a scripted upstream, and an app session helper."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.testing.pki import ServerCert
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


def try_recipient(port: int, recipient: str = "ops@example.net",
                  sender: str = "app@example.com") -> tuple[int, bytes]:
    """As an app: EHLO, MAIL, RCPT; return the reply to RCPT (where upstream failures show)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        assert client.mail(sender)[0] == 250
        return client.rcpt(recipient)


def to_toml(document: dict[str, Any]) -> str:
    """Enough TOML for a mailgate config: tables of strings, numbers and string lists."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    out: list[str] = []
    for section, body in document.items():
        if isinstance(body, list):  # [[rules]]
            for item in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {value(v)}" for k, v in item.items()]
        elif section == "upstreams":
            for name, table in body.items():
                out.append(f"[upstreams.{name}]")
                out += [f"{k} = {value(v)}" for k, v in table.items()]
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


class MailgateProcess:
    """``python -m gateway run --config FILE`` as a child process; stdout (the audit) is collected."""

    def __init__(self, config_file: str, env: dict[str, str]) -> None:
        import subprocess
        import sys
        import threading

        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", config_file],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[bytes]) -> None:
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()
        with self._changed:
            into.append(b"")  # end of stream
            self._changed.notify_all()

    def wait_for(self, lines: list[bytes], needle: bytes, timeout: float = 30) -> bytes:
        """Block until a line containing `needle` arrives on `lines`; return it."""
        def found() -> bytes | None:
            return next((line for line in lines if needle in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None or b"" in lines, timeout):
                raise TimeoutError(f"no line with {needle!r}")
            line = found()
        assert line is not None, f"stream ended without {needle!r}: {b''.join(self.stderr)!r}"
        return line

    @property
    def port(self) -> int:
        line = self.wait_for(self.stderr, b"mailgate: listening on ")
        return int(line.strip().rsplit(b":", 1)[1])

    def stop(self) -> tuple[bytes, bytes]:
        """SIGTERM, wait for exit and both streams; return (stdout, stderr)."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)
        for reader in self._readers:
            reader.join(30)
        return b"".join(self.stdout), b"".join(self.stderr)
