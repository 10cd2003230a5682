"""Capture audit events in memory, and wait for them (an event, never a sleep)."""

from __future__ import annotations

import json
import threading
from typing import Any

from gateway.audit.log import AuditLog


class CapturedAudit:
    """A text stream for `AuditLog` that keeps every line and parses it as JSON."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._partial = ""

    # the stream protocol AuditLog needs
    def write(self, text: str) -> int:
        with self._changed:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
            self.lines.extend(complete)
            self._changed.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def log(self) -> AuditLog:
        return AuditLog("<captured>", stream=self)  # type: ignore[arg-type]

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._changed:
            return [json.loads(line) for line in self.lines]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        def enough() -> bool:
            return sum(1 for line in self.lines if f'"event":"{name}"' in line) >= count

        with self._changed:
            if not self._changed.wait_for(enough, timeout):
                raise TimeoutError(f"audit has fewer than {count} {name} events")
        return self.named(name)

    def wait_until(self, name: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """The first `name` event whose fields include `fields`, waiting for it if need be."""

        def match() -> dict[str, Any] | None:
            for line in self.lines:
                if f'"event":"{name}"' in line and all(f'"{k}"' in line for k in fields):
                    event = json.loads(line)
                    if all(event.get(k) == v for k, v in fields.items()):
                        return event
            return None

        with self._changed:
            if not self._changed.wait_for(lambda: match() is not None, timeout):
                raise TimeoutError(f"audit has no {name} event with {fields}")
            found = match()
        assert found is not None
        return found

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)
