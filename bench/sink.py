"""The bench's upstream: a fast counting SMTP sink on 127.0.0.1, the same in every run.

Two ports on one asyncio loop in one process:

* ``plain``: no TLS, no AUTH (the direct run, and the sink's own ceiling);
* ``tls``:   587-style: STARTTLS is required, then AUTH PLAIN or LOGIN with the
             bench's credentials, then mail (the relays: Postfix and mailgate).

Every accepted message is counted (and thrown away); every completed TLS
handshake (and how many of them resumed a session) and every AUTH success is
counted too. The body is never split into
lines: the end of DATA is found with one ``bytes.find`` per read on the read plus
the previous four bytes, so the sink costs little per message and holds no body.

Control is one JSON object per line on stdin/stdout, so the bench waits on an
event, never a sleep:

    {"cmd": "stats"}                       -> {"messages": .., "handshakes": .., ...}
    {"cmd": "wait", "count": N, "timeout": T} -> {"ok": true, "at": <CLOCK_MONOTONIC
                                             when the N-th message was counted>, ...}

The first line written is ``{"plain": PORT, "tls": PORT, "pid": PID}``.
The sink exits when stdin closes (the bench is gone), so it never outlives it.

Usage: BENCH_SINK_PASSWORD=... python bench/sink.py CERT KEY USER
(the password comes from the environment, so it is not on a command line)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import time
from typing import Any

TERMINATOR = b"\r\n.\r\n"
MAX_COMMAND = 4096


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.handshakes = 0
        self.resumed = 0
        self.auths = 0
        self.auth_failures = 0
        self.connections = 0
        self.refused = 0
        self.waiters: list[tuple[int, asyncio.Future[float]]] = []

    def message(self, size: int) -> None:
        self.messages += 1
        self.bytes += size
        if self.waiters:
            now = time.monotonic()
            still = []
            for count, future in self.waiters:
                if self.messages >= count:
                    if not future.done():
                        future.set_result(now)
                else:
                    still.append((count, future))
            self.waiters = still

    def snapshot(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "auths": self.auths,
            "auth_failures": self.auth_failures,
            "connections": self.connections,
            "refused": self.refused,
        }


class SinkProtocol(asyncio.Protocol):
    """One SMTP server session; ``tls_context`` set means STARTTLS + AUTH are required."""

    def __init__(
        self,
        counters: Counters,
        tls_context: ssl.SSLContext | None,
        credentials: tuple[bytes, bytes],
    ) -> None:
        self.counters = counters
        self.tls_context = tls_context
        self.credentials = credentials
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.tail = b""
        self.size = 0
        self.secure = False
        self.authenticated = False
        self.auth_state: str | None = None  # "plain", "login-user", "login-pass"
        self.auth_user = b""
        self.upgrading = False
        self.early = b""
        self.has_mail = False
        self.rcpts = 0

    # --- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.transport is None:
            self.counters.connections += 1
            self.transport = transport
            transport.write(b"220 sink.bench.test ESMTP bench sink\r\n")

    def data_received(self, data: bytes) -> None:
        if self.upgrading:
            # Only TLS can deliver here (the plaintext side was paused at STARTTLS and its
            # buffer dropped): the client's first command may come with its Finished.
            self.early += data
            return
        if self.in_data:
            data = self._data(data)
            if not data:
                return
        self.buffer += data
        while not self.in_data and not self.upgrading:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_COMMAND:
                    self._reply(b"500 5.5.2 Line too long")
                    self._close()
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            self._command(line)
        if self.in_data and self.buffer:
            rest, self.buffer = self.buffer, b""
            rest = self._data(rest)
            if rest:
                self.data_received(rest)

    # --- DATA ---------------------------------------------------------------------

    def _data(self, data: bytes) -> bytes:
        """Consume body bytes; return what follows the end of data (or b"")."""
        window = self.tail + data
        at = window.find(TERMINATOR)
        if at < 0:
            self.size += len(data)
            self.tail = window[-4:]
            return b""
        consumed = at + len(TERMINATOR) - len(self.tail)
        self.size += consumed
        self.in_data = False
        self.counters.message(self.size)
        self._reply(b"250 2.0.0 Ok: queued as %d" % self.counters.messages)
        self.has_mail, self.rcpts = False, 0
        return data[consumed:]

    # --- commands -----------------------------------------------------------------

    def _reply(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def _command(self, line: bytes) -> None:
        if self.auth_state is not None:
            self._auth_step(line)
            return
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        needs_tls = self.tls_context is not None
        if verb in (b"EHLO", b"HELO"):
            self.has_mail, self.rcpts = False, 0
            if verb == b"HELO":
                self._reply(b"250 sink.bench.test")
                return
            lines = [
                b"sink.bench.test",
                b"PIPELINING",
                b"8BITMIME",
                b"SIZE 0",
                b"ENHANCEDSTATUSCODES",
            ]
            if needs_tls and not self.secure:
                lines.append(b"STARTTLS")
            if needs_tls and self.secure:
                lines.append(b"AUTH PLAIN LOGIN")
            self.transport.write(
                b"".join(b"250-" + x + b"\r\n" for x in lines[:-1])  # type: ignore[union-attr]
                + b"250 "
                + lines[-1]
                + b"\r\n"
            )
        elif verb == b"STARTTLS" and needs_tls and not self.secure:
            self._reply(b"220 2.0.0 Ready to start TLS")
            self.transport.pause_reading()  # type: ignore[union-attr]  # the ClientHello is start_tls's
            self.buffer = b""
            self.upgrading = True
            asyncio.ensure_future(self._upgrade())
        elif verb == b"AUTH" and needs_tls and self.secure and not self.authenticated:
            mechanism, _, initial = argument.partition(b" ")
            mechanism = mechanism.upper()
            if mechanism == b"PLAIN":
                if initial:
                    self._auth_plain(initial)
                else:
                    self.auth_state = "plain"
                    self._reply(b"334 ")
            elif mechanism == b"LOGIN":
                if initial:
                    self.auth_user = self._b64(initial)
                    self.auth_state = "login-pass"
                    self._reply(b"334 UGFzc3dvcmQ6")
                else:
                    self.auth_state = "login-user"
                    self._reply(b"334 VXNlcm5hbWU6")
            else:
                self._reply(b"504 5.5.4 Unrecognized authentication type")
        elif verb == b"MAIL":
            if needs_tls and not self.authenticated:
                self.counters.refused += 1
                self._reply(b"530 5.7.0 Authentication required")
            else:
                self.has_mail = True
                self._reply(b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            if not self.has_mail:
                self._reply(b"503 5.5.1 Need MAIL")
            else:
                self.rcpts += 1
                self._reply(b"250 2.1.5 Ok")
        elif verb == b"DATA":
            if not self.rcpts:
                self._reply(b"503 5.5.1 Need RCPT")
            else:
                self.in_data, self.tail, self.size = True, b"\r\n", 0
                self._reply(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self.has_mail, self.rcpts = False, 0
            self._reply(b"250 2.0.0 Ok")
        elif verb == b"NOOP":
            self._reply(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye")
            self._close()
        else:
            self._reply(b"502 5.5.2 Command not recognized")

    @staticmethod
    def _b64(text: bytes) -> bytes:
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            return b""

    def _auth_plain(self, response: bytes) -> None:
        parts = self._b64(response).split(b"\0")
        ok = len(parts) == 3 and (parts[1], parts[2]) == self.credentials
        self._auth_done(ok)

    def _auth_step(self, line: bytes) -> None:
        state, self.auth_state = self.auth_state, None
        if line == b"*":
            self._reply(b"501 5.7.0 Authentication cancelled")
        elif state == "plain":
            self._auth_plain(line)
        elif state == "login-user":
            self.auth_user = self._b64(line)
            self.auth_state = "login-pass"
            self._reply(b"334 UGFzc3dvcmQ6")
        else:
            self._auth_done((self.auth_user, self._b64(line)) == self.credentials)

    def _auth_done(self, ok: bool) -> None:
        if ok:
            self.authenticated = True
            self.counters.auths += 1
            self._reply(b"235 2.7.0 Authentication successful")
        else:
            self.counters.auth_failures += 1
            self._reply(b"535 5.7.8 Authentication credentials invalid")

    async def _upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None and self.tls_context is not None
        try:
            transport = await loop.start_tls(
                self.transport, self, self.tls_context, server_side=True, ssl_handshake_timeout=30
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            self.transport.abort()
            return
        if transport is None:
            return
        self.transport = transport  # type: ignore[assignment]
        self.counters.handshakes += 1
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.session_reused:
            self.counters.resumed += 1
        self.secure, self.upgrading, self.buffer = True, False, b""
        self.has_mail, self.rcpts = False, 0
        early, self.early = self.early, b""
        if early:
            self.data_received(early)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def control(counters: Counters) -> None:
    """Answer the bench's requests on stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        request = json.loads(line)
        if request["cmd"] == "stats":
            answer: dict[str, Any] = counters.snapshot()
        elif request["cmd"] == "wait":
            count = int(request["count"])
            if counters.messages >= count:
                answer = {"ok": True, "at": time.monotonic()}
            else:
                future: asyncio.Future[float] = loop.create_future()
                counters.waiters.append((count, future))
                try:
                    answer = {
                        "ok": True,
                        "at": await asyncio.wait_for(future, float(request["timeout"])),
                    }
                except TimeoutError:
                    answer = {"ok": False}
            answer.update(counters.snapshot())
        else:
            answer = {"error": f"unknown command {request['cmd']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


async def main(cert: str, key: str, user: str, password: str) -> None:
    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    counters = Counters()
    credentials = (user.encode(), password.encode())
    plain = await loop.create_server(
        lambda: SinkProtocol(counters, None, credentials), "127.0.0.1", 0, backlog=4096
    )
    tls = await loop.create_server(
        lambda: SinkProtocol(counters, context, credentials), "127.0.0.1", 0, backlog=4096
    )
    ports = {
        "plain": plain.sockets[0].getsockname()[1],
        "tls": tls.sockets[0].getsockname()[1],
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    await control(counters)
    plain.close()
    tls.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or not os.environ.get("BENCH_SINK_PASSWORD"):
        sys.exit("usage: BENCH_SINK_PASSWORD=... sink.py CERT KEY USER")
    asyncio.run(main(*sys.argv[1:4], os.environ["BENCH_SINK_PASSWORD"]))
