"""The audit trail: structlog, one JSON object per line, one bound logger per session.

Every event has a UTC ISO-8601 ``timestamp`` and an ``event`` name; session
events share a ``session_id``. JSON encoding escapes control characters, so CR,
LF or escape sequences in a HELO name, an address or a header can never break
a record across lines. The pipeline is private to mailgate (no global structlog
configuration), so embedding applications and tests keep their own.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

import structlog

from gateway.errors import MailgateError


class _LineSink:
    """A structlog 'logger' that writes each rendered event as one line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    info = warning = error = msg


def _serialize(event: dict[str, Any], **kwargs: Any) -> str:
    return json.dumps(event, ensure_ascii=True, separators=(",", ":"), default=str)


class AuditLog:
    def __init__(self, path: str, *, stream: IO[str] | None = None) -> None:
        self.path = path
        if stream is not None:
            self._stream = stream
            self._owned = False
        elif path == "-":
            self._stream: IO[str] = sys.stdout
            self._owned = False
        else:
            try:
                self._stream = open(path, "a", encoding="utf-8")
            except OSError as exc:
                raise MailgateError(f"audit.path: cannot open {path} for appending: {exc.strerror}") from None
            self._owned = True
        self._logger = structlog.wrap_logger(
            _LineSink(self._stream),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
                _order,
                structlog.processors.JSONRenderer(serializer=_serialize),
            ],
            context_class=dict,
            cache_logger_on_first_use=True,
        )

    def bind(self, **context: Any) -> Any:
        """A logger with `context` on every event (``session_id`` for a session)."""
        return self._logger.bind(**context)

    def event(self, name: str, **fields: Any) -> None:
        self._logger.info(name, **fields)

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def _order(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Put timestamp, event and session_id first, for people reading raw lines."""
    head = {k: event.pop(k) for k in ("timestamp", "event", "session_id") if k in event}
    head.update(event)
    return head
