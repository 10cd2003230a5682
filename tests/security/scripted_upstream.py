"""A raw, scripted upstream SMTP server that records every byte mailgate sends it.

aiosmtpd is a well-behaved server; the attacks in tests/security need a badly
behaved one: bytes injected with the 220 to STARTTLS, capabilities that change
across TLS, old TLS versions, echoing replies. This server speaks just enough
SMTP (plain sockets and `ssl`, one thread per connection, 127.0.0.1 port 0) and
keeps a transcript per connection: each line received, tagged with the phase
("plain" before TLS, "tls" after), and how the TLS handshake went.
Tests wait on `wait_closed` (a condition, never a sleep) before reading it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field

OK_TLS_CAPABILITIES = ("PIPELINING", "8BITMIME", "SIZE 10000000", "AUTH PLAIN LOGIN")


@dataclass
class Script:
    """How the server behaves; every reply is raw bytes, written in one `sendall`."""

    tls: str = "starttls"  # "starttls", "implicit" or "none" (TLS never offered)
    greeting: bytes = b"220 scripted.test ESMTP\r\n"
    capabilities_plain: tuple[str, ...] = ("PIPELINING", "STARTTLS")
    capabilities_tls: tuple[str, ...] = OK_TLS_CAPABILITIES
    starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n"
    auth_reply: bytes = b"235 2.7.0 Authentication successful\r\n"
    mail_reply: bytes = b"250 2.1.0 OK\r\n"
    rcpt_reply: bytes = b"250 2.1.5 OK\r\n"
    data_reply: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n"
    data_end_reply: bytes = b"250 2.0.0 Queued\r\n"
    echo_auth: bool = (
        False  # append the client's last AUTH line to `auth_reply` (a careless server)
    )
    other_reply: bytes = b"502 5.5.1 Not implemented\r\n"  # any other line (the "*" cancel too)


@dataclass
class Connection:
    """What one upstream connection saw."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)  # (phase, line without CRLF)
    raw: bytearray = field(default_factory=bytearray)  # every byte received, plain and decrypted
    handshake: str | None = None  # None: not tried; "ok"; or "failed: <reason>"
    messages: list[bytes] = field(default_factory=list)  # DATA contents, still dot-stuffed
    closed: bool = False

    def commands(self, phase: str | None = None) -> list[bytes]:
        """Upper-cased verbs of the command lines received (in `phase` only, if given)."""
        return [line.split(b" ", 1)[0].upper() for p, line in self.lines if phase in (None, p)]

    @property
    def saw_auth(self) -> bool:
        return b"AUTH" in self.commands()

    @property
    def saw_mail(self) -> bool:
        return b"MAIL" in self.commands() or bool(self.messages)


class ScriptedUpstream:
    def __init__(self, script: Script, context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.context = context
        self.connections: list[Connection] = []
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepter = threading.Thread(
            target=self._accept, name="scripted-upstream", daemon=True
        )

    @property
    def tls(self) -> str:
        return self.script.tls

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> ScriptedUpstream:
        self._accepter.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            # Wake accept() with a loopback connection of our own, then close.
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except OSError:
            pass
        self._accepter.join(10)
        self._listener.close()
        for thread in self._threads:
            thread.join(10)

    def wait_closed(self, count: int = 1, timeout: float = 30) -> list[Connection]:
        """Block until `count` connections have ended; return all connections."""

        def done() -> bool:
            return sum(1 for c in self.connections if c.closed) >= count

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                raise TimeoutError(f"fewer than {count} upstream connections ended")
            return list(self.connections)

    # --- serving -------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            if self._stopping:
                sock.close()
                return
            connection = Connection()
            with self._changed:
                self.connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(sock, connection), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, connection: Connection) -> None:
        sock.settimeout(20)  # a safety net for a broken test, never a wait
        try:
            _Dialogue(self, sock, connection).run()
        except (OSError, ssl.SSLError, EOFError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._changed:
                connection.closed = True
                self._changed.notify_all()


class _Dialogue:
    def __init__(
        self, server: ScriptedUpstream, sock: socket.socket, connection: Connection
    ) -> None:
        self.script = server.script
        self.context = server.context
        self.sock: socket.socket = sock
        self.connection = connection
        self.phase = "plain"
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.connection.raw += chunk
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def command(self) -> bytes:
        line = self.read_line()
        self.connection.lines.append((self.phase, line))
        return line

    def handshake(self) -> bool:
        assert self.context is not None
        try:
            self.sock = self.context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.connection.handshake = f"failed: {exc}"
            return False
        self.connection.handshake = "ok"
        self.phase = "tls"
        return True

    def ehlo_reply(self) -> bytes:
        keywords = (
            self.script.capabilities_tls if self.phase == "tls" else self.script.capabilities_plain
        )
        lines = ["scripted.test", *keywords]
        return b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
            for i, text in enumerate(lines)
        )

    def run(self) -> None:
        script = self.script
        if script.tls == "implicit" and not self.handshake():
            return
        self.send(script.greeting)
        while True:
            line = self.command()
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                self.send(self.ehlo_reply())
            elif verb == b"STARTTLS" and script.tls == "starttls" and self.phase == "plain":
                self.send(script.starttls_reply)
                if script.starttls_reply.startswith(b"220") and not self.handshake():
                    return
            elif verb == b"AUTH":
                self.auth(line)
            elif verb == b"MAIL":
                self.send(script.mail_reply)
            elif verb == b"RCPT":
                self.send(script.rcpt_reply)
            elif verb == b"DATA":
                self.send(script.data_reply)
                if script.data_reply.startswith(b"354"):
                    self.data()
            elif verb in (b"RSET", b"NOOP"):
                self.send(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                self.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                self.send(script.other_reply)

    def auth(self, line: bytes) -> None:
        words = line.split()
        mechanism = words[1].upper() if len(words) > 1 else b""
        last = line
        if mechanism == b"LOGIN":
            for prompt in (b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"):
                self.send(prompt)
                last = self.command()
                if last == b"*":
                    self.send(b"501 5.7.0 Cancelled\r\n")
                    return
        elif mechanism == b"PLAIN" and len(words) == 2:
            self.send(b"334 \r\n")
            last = self.command()
            if last == b"*":
                self.send(b"501 5.7.0 Cancelled\r\n")
                return
        reply = self.script.auth_reply
        if self.script.echo_auth:
            reply = reply.rstrip(b"\r\n") + b" " + last + b"\r\n"
        self.send(reply)

    def data(self) -> None:
        content = bytearray()
        while True:
            line = self.read_line()
            if line == b".":
                break
            content += line + b"\r\n"
        self.connection.messages.append(bytes(content))
        self.send(self.script.data_end_reply)
