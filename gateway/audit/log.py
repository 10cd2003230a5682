"""The audit trail: structlog, one JSON object per line, one bound logger per session, hash-chained.

Every event has a UTC ISO-8601 ``timestamp``, an ``event`` name and the ``instance``
that wrote it (the constructor's, default the hostname); session events share a
``session_id``. JSON encoding escapes control characters, so CR,
LF or escape sequences in a HELO name, an address or a header can never break
a record across lines. The pipeline is private to mailgate (no global structlog
configuration), so embedding applications and tests keep their own.

Each record ends with ``seq``, ``prev`` and ``hash`` (see `gateway.audit.chain`).
The chain continues across restarts (from the last record of the file, or the
state file ``PATH.chain`` beside it, whichever is further), across `reopen()`
(logrotate, SIGUSR1) and into a new file after rotation. Writing costs one hash
and one small in-place write of the state file per event; nothing is re-read.
"""

from __future__ import annotations

import datetime
import os
import socket
import stat
import sys
import threading
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

from gateway.audit import chain as audit_chain
from gateway.audit.chain import Head
from gateway.audit.events import Event
from gateway.audit.files import last_record, state_path
from gateway.errors import MailgateError


class ChainState:
    """The chain head on disk beside the audit file: one fixed-width line rewritten in place."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise MailgateError(
                f"audit.path: cannot open the chain state {path}: {exc.strerror}"
            ) from None

    def read(self) -> Head | None:
        data = os.pread(self._fd, 256, 0)
        return audit_chain.parse_state(data.decode("ascii", "replace"))

    def save(self, head: Head) -> None:
        os.pwrite(self._fd, audit_chain.format_state(head), 0)

    def close(self) -> None:
        os.close(self._fd)


class _ChainedSink:
    """A structlog 'logger' that seals each event into the chain and writes it as one line."""

    def __init__(self, stream: IO[str], head: Head, state: ChainState | None) -> None:
        self.stream = stream
        self.head = head
        self.state = state
        self.lock = threading.Lock()

    def msg(self, event: dict[str, Any]) -> None:
        with self.lock:
            line, head = audit_chain.seal(event, self.head)
            self.stream.write(line + "\n")
            self.stream.flush()
            self.head = head  # only once written: a lost write shows as a gap, not a silent skip
            if self.state is not None:
                self.state.save(head)

    info = warning = error = msg


def _to_sink(logger: Any, method: str, event: MutableMapping[str, Any]) -> tuple[Any, ...]:
    """Hand the event dict itself to the sink, which seals and renders it under its lock."""
    return (event,), {}


class AuditLog:
    """The audit log at `path` ("-": stdout, or `stream`); every event names its `instance`
    (default: this host's name), so files of several instances can be merged and told apart."""

    def __init__(
        self, path: str, *, stream: IO[str] | None = None, instance: str | None = None
    ) -> None:
        self.path = path
        self.instance = instance or socket.gethostname()
        state: ChainState | None = None
        head = audit_chain.START
        if stream is not None:
            self._owned = False
        elif path == "-":
            stream = sys.stdout
            self._owned = False
        else:
            stream = self._open(path)
            self._owned = True
            if _regular(
                stream
            ):  # not /dev/stdout, a FIFO or a tty: nothing to read back or keep beside
                state = ChainState(state_path(path))
                head = self._resume(path, state, stream)
        self._sink = _ChainedSink(stream, head, state)
        self._logger = structlog.wrap_logger(
            self._sink,
            processors=[_Record(self.instance), _to_sink],
            context_class=dict,
            cache_logger_on_first_use=True,
        )

    @staticmethod
    def _open(path: str) -> IO[str]:
        try:
            return open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise MailgateError(
                f"audit.path: cannot open {path} for appending: {exc.strerror}"
            ) from None

    @staticmethod
    def _resume(path: str, state: ChainState, stream: IO[str]) -> Head:
        """Continue from the last record of the file or the saved head, whichever is further."""
        record, torn = last_record(path)
        if torn:
            stream.write("\n")  # a crash cut the last line: end it, so the next record stands alone
            stream.flush()
        heads = [h for h in (state.read(), audit_chain.head_of(record) if record else None) if h]
        return max(heads, key=lambda h: h.seq, default=audit_chain.START)

    @property
    def head(self) -> Head:
        """The hash and seq of the last record written."""
        return self._sink.head

    def bind(self, **context: Any) -> Any:
        """A logger with `context` on every event (``session_id`` for a session)."""
        return self._logger.bind(**context)

    def event(self, name: Event, **fields: Any) -> None:
        self._logger.info(name, **fields)

    def reopen(self) -> bool:
        """Close and reopen the file at `path` (logrotate's SIGUSR1); the chain continues.

        Returns False, and records ``audit.reopen_failed`` in the old file, when the
        new one cannot be opened: auditing goes on into the old file rather than nowhere.
        """
        if not self._owned:
            return True
        stream: IO[str] | None = None
        try:
            stream = self._open(self.path)
            state = ChainState(state_path(self.path)) if _regular(stream) else None
        except MailgateError as exc:
            if stream is not None:
                stream.close()
            self.event(Event.AUDIT_REOPEN_FAILED, path=self.path, error=str(exc))
            return False
        sink = self._sink
        with sink.lock:
            old_stream, old_state = sink.stream, sink.state
            sink.stream, sink.state = stream, state
            if old_state is not None:
                old_state.close()
            if state is not None:
                state.save(sink.head)
        old_stream.close()
        self.event(Event.AUDIT_REOPENED, path=self.path)
        return True

    def close(self) -> None:
        if self._owned:
            with self._sink.lock:
                self._sink.stream.close()
                if self._sink.state is not None:
                    self._sink.state.close()
                    self._sink.state = None


def _regular(stream: IO[str]) -> bool:
    return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)


class _Record:
    """Stamp, check and order an event in one processor (the audit writes several per message):
    ``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` wrote it, the event
    name refused (ValueError) if it is not in `gateway.audit.events` (none goes
    undocumented), the ``instance`` that wrote it (one given with the event stays)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        now = datetime.datetime.now(tz=datetime.UTC)
        event["timestamp"] = now.isoformat().replace("+00:00", "Z")
        event["event"] = Event(event["event"])
        event.setdefault("instance", self.instance)
        return _order(logger, method, event)


def _order(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Put timestamp, event, session_id and instance first, for people reading raw lines."""
    head: dict[str, Any] = {
        k: event.pop(k) for k in ("timestamp", "event", "session_id", "instance") if k in event
    }
    head.update(event)
    return head
