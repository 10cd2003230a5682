"""An upstream SMTP server that misbehaves once, at a chosen step of the connection.

`FaultyUpstream.arm(Fault(step, kind))` makes the next connection to reach `step` do `kind`
there instead of its normal part; the fault then disarms itself (`fired` says it happened),
so the same server is healthy for what follows. Steps, in dialogue order (STARTTLS;
implicit TLS starts with the handshake): ``connect``, ``handshake``, ``greeting``, ``ehlo``,
``starttls``, ``ehlo_tls``, ``auth``, ``mail``, ``rcpt``, ``data``, ``body`` (after the first
line of content), ``dot``. Kinds:

- ``refuse`` (connect only): the port is closed, connections are refused until `heal`;
- ``close``: FIN instead of the reply; ``reset``: RST (SO_LINGER 0) instead of the reply;
- ``garbage``: bytes that are no SMTP reply (at the handshake: no TLS record), then silence;
- ``error``: a 4xx reply where the normal one would be (`ERRORS`);
- ``stall``: no reply at all, until the gateway gives up and closes.

Plain sockets and `ssl`, one thread per connection, 127.0.0.1; tests wait on
`wait_messages` (a condition, never a sleep).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from dataclasses import dataclass

STEPS = (
    "connect",
    "handshake",
    "greeting",
    "ehlo",
    "starttls",
    "ehlo_tls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "body",
    "dot",
)
KINDS = ("refuse", "close", "reset", "garbage", "error", "stall")
IMPLICIT_STEPS = tuple(s for s in STEPS if s not in ("starttls", "ehlo_tls"))

ERRORS = {  # the 4xx an upstream may answer at each step that has a reply
    "greeting": b"421 4.3.2 Service not available\r\n",
    "ehlo": b"451 4.3.0 EHLO failed\r\n",
    "starttls": b"454 4.7.0 TLS not available due to temporary reason\r\n",
    "ehlo_tls": b"451 4.3.0 EHLO failed\r\n",
    "auth": b"454 4.7.0 Temporary authentication failure\r\n",
    "mail": b"451 4.3.0 Try again later\r\n",
    "rcpt": b"450 4.2.1 Mailbox busy\r\n",
    "data": b"451 4.3.0 No DATA now\r\n",
    "dot": b"451 4.3.0 Not queued, try again\r\n",
}
GARBAGE = b"\x00\xff this is no SMTP reply and no TLS record \x16\x03\r\n"


@dataclass(frozen=True)
class Fault:
    step: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}"


def applicable(fault: Fault, tls: str) -> bool:
    """Whether an upstream in `tls` mode ("starttls" or "implicit") can do `fault`."""
    steps = STEPS if tls == "starttls" else IMPLICIT_STEPS
    if fault.step not in steps or fault.kind not in KINDS:
        return False
    if fault.kind == "refuse":
        return fault.step == "connect"
    if fault.step == "connect":
        return False  # a close at connect is a close at the greeting (or handshake)
    if fault.kind == "error":
        return fault.step in ERRORS
    return True


class _Stop(Exception):
    """This connection ends here."""


class FaultyUpstream:
    def __init__(self, context: ssl.SSLContext, tls: str = "starttls") -> None:
        self.context = context
        self.tls = tls
        self.messages: list[bytes] = []
        self.fault: Fault | None = None
        self.fired: Fault | None = None
        self._changed = threading.Condition()
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._accepter = self._start_accepting()

    # --- the test's side ---------------------------------------------------------

    def arm(self, fault: Fault) -> None:
        assert applicable(fault, self.tls), fault
        with self._changed:
            self.fault, self.fired = fault, None
        if fault.kind == "refuse":  # it happens now: nothing listens until `heal`
            self._close_listener()
            with self._changed:
                self.fault, self.fired = None, fault

    def heal(self) -> None:
        """No fault from now on; a refusing port listens again (the same port)."""
        with self._changed:
            self.fault = None
        if self._listener is None:
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self._accepter = self._start_accepting()

    def take(self, step: str) -> Fault | None:
        """The armed fault if it is for `step` (it fires now, once)."""
        with self._changed:
            if self.fault is not None and self.fault.step == step:
                self.fired, self.fault = self.fault, None
                return self.fired
            return None

    def wait_messages(self, count: int, timeout: float = 15) -> list[bytes]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"the upstream has fewer than {count} messages")
            return list(self.messages)

    def stop(self) -> None:
        self._stopping = True
        self._close_listener()
        for thread in self._threads:
            thread.join(10)

    # --- serving -------------------------------------------------------------------

    def _start_accepting(self) -> threading.Thread:
        assert self._listener is not None
        thread = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        thread.start()
        return thread

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        listener.close()
        self._accepter.join(10)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(20)  # a safety net for a broken test, never a wait
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dialogue = _Dialogue(self, sock)
        try:
            dialogue.run()
        except (_Stop, OSError, ssl.SSLError, EOFError):
            pass
        finally:
            try:
                dialogue.sock.close()
            except OSError:
                pass


class _Dialogue:
    def __init__(self, server: FaultyUpstream, sock: socket.socket) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.buffer = b""
        self.tls = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            # Acknowledge at once: the gateway's pipelined second write would otherwise wait
            # for a delayed ACK (Nagle), 40 ms a step on Linux loopback.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def drain(self) -> None:
        """Say nothing more; read until the gateway closes."""
        while self.sock.recv(65536):
            pass
        raise _Stop

    def step(self, name: str, reply: bytes | None = None) -> bool:
        """Do step `name` (send `reply`), or its fault; False when a 4xx replaced it."""
        fault = self.server.take(name)
        if fault is None:
            if name == "handshake":
                self.sock = self.server.context.wrap_socket(self.sock, server_side=True)
                self.tls = True
            elif reply is not None:
                self.send(reply)
            return True
        if fault.kind == "close":
            raise _Stop
        if fault.kind == "reset":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Stop
        if fault.kind == "garbage":
            self.send(GARBAGE)
            self.drain()
        if fault.kind == "stall":
            self.drain()
        self.send(ERRORS[name])  # "error": the dialogue goes on, the gateway decides
        return False

    def ehlo(self) -> bytes:
        if self.tls:
            keywords = ["PIPELINING", "8BITMIME", "SIZE 10000000", "AUTH PLAIN LOGIN"]
        else:
            keywords = ["PIPELINING", "STARTTLS"]
        lines = ["faulty.test", *keywords]
        return b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
            for i, text in enumerate(lines)
        )

    def run(self) -> None:
        if self.server.tls == "implicit":
            self.step("handshake")
        self.step("greeting", b"220 faulty.test ESMTP\r\n")
        while True:
            verb = self.line().split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                if self.step("ehlo_tls" if self.tls and self.server.tls == "starttls" else "ehlo"):
                    self.send(self.ehlo())
            elif verb == b"STARTTLS" and not self.tls:
                if self.step("starttls", b"220 2.0.0 Ready to start TLS\r\n"):
                    self.step("handshake")
            elif verb == b"AUTH":
                self.step("auth", b"235 2.7.0 Authentication successful\r\n")
            elif verb == b"MAIL":
                self.step("mail", b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                self.step("rcpt", b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                if self.step("data", b"354 End data with <CR><LF>.<CR><LF>\r\n"):
                    self.body()
            elif verb in (b"RSET", b"NOOP"):
                self.send(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                self.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                self.send(b"502 5.5.1 Not implemented\r\n")

    def body(self) -> None:
        content = bytearray()
        first = True
        while (line := self.line()) != b".":
            if first:
                self.step("body")
                first = False
            content += line + b"\r\n"
        if not self.step("dot"):
            return
        with self.server._changed:
            self.server.messages.append(bytes(content))
            self.server._changed.notify_all()
        self.send(b"250 2.0.0 Queued\r\n")
