"""The app side of the bench: what sends mail into the relay under test.

* `smtp_source`: Postfix's smtp-source, the load generator for throughput
  (one message per connection, C sessions in parallel; it speaks HELO).
* `timed_messages`: smtplib in threads, one message per connection, timing each
  message from connect to the reply after the final dot (latency as the app sees it).
* `idle_sessions`: many app connections that greet and then sit idle.
* `big_message`: one large message streamed over a raw socket, never held in memory.

Everything connects to 127.0.0.1 only.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from errors import BenchError

SENDER = "app@bench.test"
RECIPIENT = "rcpt@sink.test"
HELO = "bench.test"


def smtp_source(
    binary: str, port: int, messages: int, size: int, sessions: int, timeout: float
) -> float:
    """Run smtp-source to 127.0.0.1:port; return its wall time. Any non-2xx reply is fatal to it."""
    command = [
        binary,
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        HELO,
        f"127.0.0.1:{port}",
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"smtp-source did not finish within {timeout:g} s: {' '.join(command)}"
        ) from None
    if done.returncode != 0:
        raise BenchError(f"smtp-source failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.monotonic() - started


def message_body(size: int) -> bytes:
    """A message of about `size` body bytes in 78-character lines, like smtp-source's."""
    header = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n"
        "Message-Id: <bench@bench.test>\r\n\r\n"
    ).encode()
    line = b"X" * 78 + b"\r\n"
    return header + line * max(1, size // len(line))


def timed_messages(
    port: int, count: int, concurrency: int, size: int, timeout: float = 60
) -> list[float]:
    """Send `count` messages, one per connection, `concurrency` at a time; seconds per message."""
    body = message_body(size)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [count]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] == 0 or errors:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                client = smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=timeout)
                try:
                    client.sendmail(SENDER, [RECIPIENT], body)
                    elapsed = time.perf_counter() - started
                    client.quit()
                finally:
                    client.close()
            except (OSError, smtplib.SMTPException) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                latencies.append(elapsed)

    threads = [
        threading.Thread(target=worker, name=f"app-{i}", daemon=True) for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f"the timed load generator failed on port {port}: {errors[0]}")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _Replies:
    """Read SMTP replies from a blocking socket (multi-line aware)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> tuple[int, str]:
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                if len(line) < 4 or line[3:4] != b"-":
                    return int(line[:3]), line.decode(errors="replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("the server closed the connection")
            self.buffer += chunk

    def expect(self, sock: socket.socket, command: bytes | None, code_class: int) -> str:
        if command is not None:
            sock.sendall(command)
        code, text = self.read()
        if code // 100 != code_class:
            raise BenchError(f"unexpected reply {text!r} to {command!r}")
        return text


@dataclass
class IdleSessions:
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def idle_sessions(port: int, count: int, timeout: float = 30) -> IdleSessions:
    """Open `count` app sessions that each got the greeting and an EHLO answer, then sit idle."""
    sessions = IdleSessions([])
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sessions.sockets.append(sock)
            replies = _Replies(sock)
            replies.expect(sock, None, 2)
            replies.expect(sock, b"EHLO idle.bench.test\r\n", 2)
    except OSError as exc:
        opened = len(sessions.sockets)
        sessions.close()
        raise BenchError(f"could only open {opened} of {count} idle sessions: {exc}") from None
    return sessions


def big_message(port: int, size: int, timeout: float = 300) -> float:
    """Stream one message of `size` bytes through 127.0.0.1:port; return the seconds it took."""
    line = b"Y" * 78 + b"\r\n"
    chunk = line * (1024 * 1024 // len(line))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        replies = _Replies(sock)
        replies.expect(sock, None, 2)
        replies.expect(sock, f"EHLO {HELO}\r\n".encode(), 2)
        replies.expect(sock, f"MAIL FROM:<{SENDER}> SIZE={size}\r\n".encode(), 2)
        replies.expect(sock, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), 2)
        replies.expect(sock, b"DATA\r\n", 3)
        sock.sendall(b"Subject: one big message\r\n\r\n")
        sent = 0
        while sent < size:
            piece = (
                chunk if size - sent >= len(chunk) else line * max(1, (size - sent) // len(line))
            )
            sock.sendall(piece)
            sent += len(piece)
        replies.expect(sock, b".\r\n", 2)
        replies.expect(sock, b"QUIT\r\n", 2)
    return time.monotonic() - started
