"""A real submission server to relay to: aiosmtpd with STARTTLS or implicit TLS, and AUTH.

Runs its own asyncio loop in a thread and binds 127.0.0.1 on a free port.
Each message it accepts is recorded with the facts a test or the demo checks:
the envelope, the exact bytes, the TLS version and the authenticated user.
Behaviour can be scripted: replies to MAIL, RCPT (per address), DATA,
STARTTLS and a refused AUTH, whether STARTTLS is offered at all, and holding
DATA's reply back until an event is set (`wait_held`: concurrent transactions). It also
counts the QUITs it was sent and how each connection ended (`ended`: None for a
clean close, else the exception's name, e.g. ConnectionResetError).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class ReceivedMessage:
    sender: str
    recipients: list[str]
    content: bytes
    tls_version: str | None
    auth_user: str | None


@dataclass
class Script:
    """Scripted replies; None means the normal behaviour."""

    mail: str | None = None
    rcpt: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    starttls: str | None = None
    auth_refusal: str | None = None  # the whole reply to a refused AUTH, e.g. "535 No"
    hold_data: threading.Event | None = None  # set: DATA's reply waits until it is set (30 s)


class _Handler:
    def __init__(self, server: SubmissionServer) -> None:
        self.server = server

    async def handle_MAIL(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.server.script.mail:
            return self.server.script.mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        scripted = self.server.script.rcpt.get(address)
        if scripted and not scripted.startswith("2"):
            return scripted
        envelope.rcpt_tos.append(address)
        return scripted or "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.server.script.data:
            return self.server.script.data
        gate = self.server.script.hold_data
        if gate is not None:
            self.server._holding(envelope.mail_from or "", 1)
            try:
                await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
            finally:
                self.server._holding(envelope.mail_from or "", -1)
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        message = ReceivedMessage(
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            envelope.original_content or b"",
            ssl_object.version() if ssl_object else None,
            user,
        )
        self.server._record(message)
        return "250 2.0.0 Queued as upstream-%d" % len(self.server.messages)


class _SMTP(SMTP):
    """aiosmtpd's server, with a scriptable STARTTLS refusal."""

    def __init__(self, owner: SubmissionServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802
        if self._owner.script.starttls:
            await self.push(self._owner.script.starttls)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_QUIT(self, arg: str) -> None:  # noqa: N802
        self._owner._quit_received()
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._connection_ended(error)
        super().connection_lost(error)


logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # aiosmtpd's per-connection chatter


class SubmissionServer:
    """``tls`` is "starttls" (587-style), "implicit" (465-style) or "none" (no STARTTLS offered)."""

    def __init__(
        self,
        tls: str,
        context: ssl.SSLContext | None,
        users: dict[str, str],
        hostname: str = "upstream.test",
    ) -> None:
        self.tls = tls
        self.context = context
        self.users = users
        self.hostname = hostname
        self.script = Script()
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.connections = 0
        self.quits = 0  # QUIT commands received, on any connection
        self.ended: list[str | None] = []  # per closed connection: None (clean) or the error
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"upstream-{tls}", daemon=True
        )
        self._server: asyncio.base_events.Server | None = None
        self._changed = threading.Condition()
        self.on_message: Callable[[ReceivedMessage], None] | None = None
        self.held: list[str] = []  # senders whose DATA reply `script.hold_data` keeps back now

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            ok = self.users.get(user) == password
            self.auth_attempts.append((user, ok))
            if not ok and self.script.auth_refusal:
                return AuthResult(success=False, handled=False, message=self.script.auth_refusal)
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
        return AuthResult(success=False, handled=False)

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = dict(
            hostname=self.hostname,
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=self.tls != "implicit",
            ident="upstream.test ESMTP",
            data_size_limit=None,
        )
        if self.tls == "starttls":
            kwargs.update(tls_context=self.context, require_starttls=True)
        with warnings.catch_warnings():
            # Implicit TLS: aiosmtpd cannot see the TLS wrapper and warns that AUTH is not TLS-only.
            warnings.simplefilter("ignore", UserWarning)
            return _SMTP(self, _Handler(self), **kwargs)

    def _record(self, message: ReceivedMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        if self.on_message:
            self.on_message(message)

    def _quit_received(self) -> None:
        with self._changed:
            self.quits += 1
            self._changed.notify_all()

    def _connection_ended(self, error: Exception | None) -> None:
        with self._changed:
            self.ended.append(type(error).__name__ if error is not None else None)
            self._changed.notify_all()

    def _holding(self, sender: str, change: int) -> None:
        with self._changed:
            if change > 0:
                self.held.append(sender)
            else:
                self.held.remove(sender)
            self._changed.notify_all()

    def wait_held(self, count: int, timeout: float = 30) -> list[str]:
        """Block until `count` messages wait on `script.hold_data`: their senders."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.held) >= count, timeout):
                raise TimeoutError(f"upstream holds {len(self.held)} of {count} messages")
            return sorted(self.held)

    def wait_closed(self, count: int, timeout: float = 30) -> list[str | None]:
        """Block until `count` connections have ended; how each ended (None: cleanly)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.ended) >= count, timeout):
                raise TimeoutError(f"{len(self.ended)} of {count} upstream connections ended")
            return list(self.ended)

    def wait_for(self, count: int, timeout: float = 30) -> list[ReceivedMessage]:
        """Block until `count` messages have arrived (an event, not a sleep)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"upstream got {len(self.messages)} of {count} messages")
            return list(self.messages)

    def start(self, port: int = 0) -> int:
        """Serve on 127.0.0.1:`port` (0: a free port); a given port brings a stopped upstream back."""
        self._thread.start()

        async def serve() -> asyncio.base_events.Server:
            ssl_context = self.context if self.tls == "implicit" else None
            return await self._loop.create_server(self._factory, "127.0.0.1", port, ssl=ssl_context)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                # End the per-connection handlers too, so none is destroyed while pending.
                current = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not current]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
