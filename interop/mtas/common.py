"""What every real server of the interop suite shares: ports, a scratch folder, its log, its maildir.

A server binds 127.0.0.1 only, on ports the kernel just gave out, and lives in a scratch folder of
its own (world-traversable: the servers drop to their own users). Its log is read from a mark, so a
test sees only what its own connections caused. Waiting on a server is polling its port or its
files with a deadline: a real server has no event to wait on.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CACHE = os.environ.get("MAILGATE_INTEROP_CACHE", "/var/cache/mailgate-interop")
USER = "relay@example.test"
PASSWORD = "s3cret-Pa55word-never-logged"  # tests/conftest.py's, which start_gateway sets
SENDER = "app@example.com"  # owned by USER where the server checks (Postfix)
OTHER_SENDER = "other@example.com"  # owned by nobody
BOUNCE_SENDER = "bounces-to@example.net"  # owned by USER, and a mailbox: a DSN to it arrives
DOMAIN = "example.net"  # delivered into the server's maildir
REFUSED = "refused@example.net"  # every server refuses this recipient, in its own words


class ServerFailure(Exception):
    """A server did not start, stop or deliver as expected (its log says why)."""


# The servers' ports come from below the kernel's ephemeral range (32768-60999 by default): a
# port taken with bind(0) and released could be handed to any outgoing connection (mailgate's
# own, the tests') before the server binds it, and Exim then waits 30 s between bind retries.
SERVER_PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, never handed out twice per run."""
    for _ in range(1000):
        port = random.choice(SERVER_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServerFailure(f"no free port in {SERVER_PORTS}")


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `check` until it returns something true; ServerFailure naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ServerFailure(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def greets(port: int, *, implicit: bool = False, host: str = "127.0.0.1") -> bool:
    """True when something on host:port accepts a connection (and, unless TLS, says 220)."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            if implicit:
                return True
            if not sock.recv(512).startswith(b"220"):
                return False
            sock.sendall(b"QUIT\r\n")  # a good citizen: the server logs a clean end
            sock.recv(512)
            return True
    except OSError:
        return False


@dataclass
class Closing:
    """How one connection ended, as the server logged it."""

    quit: bool
    line: str


@dataclass
class Server:
    """One real server: subclasses fill in how it is configured, started and read."""

    root: str
    ca_file: str
    cert_file: str
    key_file: str
    name: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)  # a role's address, if not 127.0.0.1
    process: subprocess.Popen[bytes] | None = None
    # check name -> why this server cannot express it (the test is skipped with that reason)
    cannot: dict[str, str] = field(default_factory=dict)
    refusal_code: int = 550  # its reply to RCPT TO:<REFUSED>, and a part of the text
    refusal: str = ""
    auth_refusal: str = ""  # the text of its reply to a wrong password
    login_logged: str = ""  # a regular expression: its log says AUTH LOGIN was used

    def __post_init__(self) -> None:
        """Subclasses name themselves and say what they cannot express."""

    # --- set-up -----------------------------------------------------------------------------
    def configure(self) -> None:
        raise NotImplementedError

    def launch(self) -> None:
        raise NotImplementedError

    def halt(self) -> None:
        self.terminate_process()

    def version(self) -> str:
        raise NotImplementedError

    @property
    def log_path(self) -> str:
        raise NotImplementedError

    @property
    def maildir(self) -> str:
        raise NotImplementedError

    def ready_ports(self) -> dict[str, int]:
        return self.ports

    def wait_ready(self, timeout: float = 60) -> None:
        for role, port in self.ready_ports().items():
            wait_until(
                lambda p=port, r=role: greets(
                    p, implicit=r == "implicit", host=self.addresses.get(r, "127.0.0.1")
                ),
                timeout,
                f"{self.name} answering on port {port} ({role}); see {self.log_path}",
            )

    def restart(self) -> None:
        self.halt()
        self.launch()
        self.wait_ready()

    def terminate_process(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    # --- reading what happened -------------------------------------------------------------------
    def mark(self) -> int:
        """Where the log ends now: `log_since(mark)` is what happened after."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(mark)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, mark: int, pattern: str, count: int = 1, timeout: float = 20) -> list[str]:
        """The log lines after `mark` matching `pattern`, once there are `count` of them."""
        regex = re.compile(pattern)

        def found() -> list[str]:
            hits = [line for line in self.log_since(mark).splitlines() if regex.search(line)]
            return hits if len(hits) >= count else []

        return wait_until(found, timeout, f"{self.name} log {pattern!r} x{count}")  # type: ignore[return-value]

    def connections(self, text: str, port: int) -> int:
        """Connections accepted on `port`, from the log text."""
        raise NotImplementedError

    def closings(self, text: str, port: int) -> list[Closing]:
        """How each connection on `port` ended, from the log text."""
        raise NotImplementedError

    def closing_pattern(self) -> str:
        """A regular expression matching the line that records the end of a connection."""
        raise NotImplementedError

    def wait_closings(self, mark: int, port: int, count: int = 1) -> list[Closing]:
        self.wait_log(mark, self.closing_pattern(), count)
        return self.closings(self.log_since(mark), port)

    def tls_alert_logged(self, text: str) -> bool:
        """The log says the client sent a TLS alert (not: the connection was reset)."""
        return bool(re.search(r"(?i)alert", text))

    def stored(self, token: bytes) -> list[bytes]:
        """Every message in the maildir that contains `token`."""
        found = []
        for sub in ("new", "cur"):
            folder = os.path.join(self.maildir, sub)
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for entry in names:
                try:
                    with open(os.path.join(folder, entry), "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                if token in data:
                    found.append(data)
        return found

    def delivered(self, token: bytes, timeout: float = 30) -> bytes:
        """The bytes of the first message in the maildir containing `token` (waits for it)."""
        found = wait_until(
            lambda: self.stored(token), timeout, f"{self.name}: a delivered message with {token!r}"
        )
        return found[0]  # type: ignore[index]

    def delivered_all(self, token: bytes, count: int, timeout: float = 30) -> list[bytes]:
        found = wait_until(
            lambda: len(self.stored(token)) >= count and self.stored(token),
            timeout,
            f"{self.name}: {count} delivered messages with {token!r}",
        )
        return found  # type: ignore[return-value]

    def recipient_of(self, stored: bytes) -> str:
        """The envelope recipient a delivered message was stored for (its Delivered-To or
        Envelope-to field)."""
        found = re.search(rb"(?mi)^(?:Delivered-To|Envelope-to): *<?([^>\s]+)", stored)
        return found.group(1).decode() if found else ""


def write(path: str, text: str, mode: int = 0o644) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def copy_pki(server: Server, folder: str, owner: str | None = None) -> tuple[str, str]:
    """The server's certificate and key copied into `folder` (key owner-only, `owner` if given)."""
    os.makedirs(folder, exist_ok=True)
    cert = shutil.copy(server.cert_file, os.path.join(folder, "server.crt"))
    key = shutil.copy(server.key_file, os.path.join(folder, "server.key"))
    os.chmod(key, 0o600)
    if owner:
        shutil.chown(key, owner, owner)
    return cert, key


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
