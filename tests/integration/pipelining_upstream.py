"""An upstream that offers PIPELINING (RFC 2920) or not, and records what came in each read.

aiosmtpd does not offer PIPELINING, so it cannot show what a client pipelines. This server
(implicit TLS, AUTH PLAIN taken from anyone, one thread per connection, 127.0.0.1 port 0)
answers like Postfix: a RCPT before MAIL, or DATA with no recipient accepted, is refused
(``503``, ``554 5.5.1``), and notes for every command line the number of the read (the
`recv` on the TLS socket, one TLS record at most) it arrived in, so a test can tell "MAIL,
RCPT, DATA in one write" from "one command per round trip". Scripted: MAIL's reply, a reply
per recipient, DATA's reply when no recipient was accepted (a ``354`` there: a server that
lets DATA through anyway), replies for the next RSETs (``b""``: close the connection instead
of answering), and a recipient whose RCPT closes the connection. Tests wait on
`wait_closed` or `wait_messages` (conditions, never sleeps).
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field


@dataclass
class Script:
    pipelining: bool = True
    mail: bytes = b"250 2.1.0 Ok"
    rcpt: dict[str, bytes] = field(default_factory=dict)  # address -> reply (else 250)
    no_recipients: bytes = b"554 5.5.1 Error: no valid recipients"  # DATA after none accepted
    rset: list[bytes] = field(default_factory=list)  # the next RSETs' replies (b"": close)
    drop_at: str | None = None  # this recipient's RCPT closes the connection (once)


@dataclass
class Message:
    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class Connection:
    commands: list[tuple[int, bytes]] = field(default_factory=list)  # (read number, line)
    messages: list[Message] = field(default_factory=list)
    empty: list[bytes] = field(default_factory=list)  # what came after a 354 with no recipient
    quit: bool = False
    closed: bool = False

    def flights(self) -> list[list[bytes]]:
        """The verbs of the command lines that came in each read, read by read."""
        reads: dict[int, list[bytes]] = {}
        for read, line in self.commands:
            reads.setdefault(read, []).append(line.split(b" ", 1)[0].split(b":", 1)[0].upper())
        return list(reads.values())


class PipeliningUpstream:
    def __init__(self, context: ssl.SSLContext, script: Script | None = None) -> None:
        self.context = context
        self.script = script or Script()
        self.connections: list[Connection] = []
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.tls = "implicit"
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="pipelining", daemon=True)
        self._accepter.start()

    @property
    def messages(self) -> list[Message]:
        return [m for c in self.connections for m in c.messages]

    def wait_messages(self, count: int, timeout: float = 30) -> list[Message]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"fewer than {count} messages arrived")
            return self.messages

    def wait_closed(self, count: int = 1, timeout: float = 30) -> list[Connection]:
        def done() -> bool:
            return sum(c.closed for c in self.connections) >= count

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                raise TimeoutError(f"fewer than {count} upstream connections ended")
            return list(self.connections)

    def stop(self) -> None:
        self._stopping = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except OSError:
            pass
        self._accepter.join(10)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            if self._stopping:
                sock.close()
                return
            connection = Connection()
            with self._changed:
                self.connections.append(connection)
            threading.Thread(target=self._serve, args=(sock, connection), daemon=True).start()

    def _serve(self, sock: socket.socket, connection: Connection) -> None:
        sock.settimeout(20)  # a safety net for a broken test, never a wait
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
            _Dialogue(self, tls, connection).run()
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

    def _delivered(self, connection: Connection, message: Message) -> None:
        with self._changed:
            connection.messages.append(message)
            self._changed.notify_all()


class _Dialogue:
    def __init__(
        self, server: PipeliningUpstream, sock: ssl.SSLSocket, connection: Connection
    ) -> None:
        self.server = server
        self.script = server.script
        self.sock = sock
        self.connection = connection
        self.buffer = b""
        self.reads = 0
        self.sender: str | None = None
        self.recipients: list[str] = []

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.reads += 1
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def run(self) -> None:
        self.send(b"220 pipelining.test ESMTP")
        while True:
            line = self.line()
            self.connection.commands.append((self.reads, line))
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
            if verb == b"EHLO":
                keywords = [b"pipelining.test", b"8BITMIME", b"SIZE 10000000", b"AUTH PLAIN"]
                if self.script.pipelining:
                    keywords.insert(1, b"PIPELINING")
                for keyword in keywords[:-1]:
                    self.send(b"250-" + keyword)
                self.send(b"250 " + keywords[-1])
            elif verb == b"AUTH":
                self.send(b"235 2.7.0 Authentication successful")
            elif verb == b"MAIL":
                self.mail(line)
            elif verb == b"RCPT":
                self.rcpt(line)
            elif verb == b"DATA":
                self.data()
            elif verb == b"RSET":
                reply = self.script.rset.pop(0) if self.script.rset else b"250 2.0.0 Ok"
                if not reply:
                    return  # closed instead of an answer
                if reply.startswith(b"250"):
                    self.sender, self.recipients = None, []
                self.send(reply)
            elif verb == b"QUIT":
                self.connection.quit = True
                self.send(b"221 2.0.0 Bye")
                return
            else:
                self.send(b"502 5.5.2 Error: command not recognized")

    def mail(self, line: bytes) -> None:
        if self.sender is not None:
            self.send(b"503 5.5.1 Error: nested MAIL command")
            return
        reply = self.script.mail
        if reply.startswith(b"250"):
            self.sender = line.split(b":", 1)[1].split(b">", 1)[0].lstrip(b" <").decode()
        self.send(reply)

    def rcpt(self, line: bytes) -> None:
        address = line.split(b":", 1)[1].split(b">", 1)[0].lstrip(b" <").decode()
        if address == self.script.drop_at:
            self.script.drop_at = None
            raise EOFError  # the connection ends here
        if self.sender is None:
            self.send(b"503 5.5.1 Error: need MAIL command")
            return
        reply = self.script.rcpt.get(address, b"250 2.1.5 Ok")
        if reply.startswith(b"2"):
            self.recipients.append(address)
        self.send(reply)

    def data(self) -> None:
        if self.sender is None:
            self.send(b"503 5.5.1 Error: need MAIL command")
            return
        if not self.recipients:
            self.send(self.script.no_recipients)
            if not self.script.no_recipients.startswith(b"354"):
                return
        else:
            self.send(b"354 End data with <CR><LF>.<CR><LF>")
        content = bytearray()
        while (line := self.line()) != b".":
            content += line + b"\r\n"
        message = Message(self.sender, list(self.recipients), bytes(content))
        self.sender, self.recipients = None, []
        if not message.recipients:  # the dot after a 354 that should not have been
            self.connection.empty.append(message.content)
            self.send(b"554 5.5.1 Error: no valid recipients")
            return
        self.server._delivered(self.connection, message)
        self.send(b"250 2.0.0 Ok: queued as %d" % len(self.server.messages))
