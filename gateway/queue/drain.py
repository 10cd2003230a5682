"""Draining a spool before its instance is removed: a marker file the running gateway watches. No reactor.

``mailgate queue drain`` writes ``draining`` in the spool's root (one line: when it
was asked); ``mailgate queue resume`` removes it. The delivery runner looks for it at
each scan (every second), so the command is safe while the daemon runs and takes
effect within about a second. While the marker is there the gateway:

- answers queue-mode RCPT and DATA with ``451 4.3.2`` (not accepting queued mail here),
  so apps try again, elsewhere; relay mode goes on (nothing of it stays behind);
- reports ``/readyz`` not ready, so a balancer stops sending it connections;
- retries every deferred message once, at once, then delivers what it holds as usual.

When it takes the drain up it writes ``draining.seen`` with the same line, so
``mailgate queue drain --wait`` knows a running gateway has seen it before it waits for
``incoming/``, ``active/`` and ``deferred/`` to be empty. The marker survives a
restart: a gateway started on a draining spool goes on draining. Dead letters, held
(``hold/``) and quarantined messages are not delivered by a drain; they stay, counted apart.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from gateway.queue.spool import ACTIVE, DEAD, DEFERRED, HOLD, INCOMING, QUARANTINE, Spool

MARKER = "draining"
SEEN = "draining.seen"
HOLDS = (INCOMING, ACTIVE, DEFERRED)  # what a drain must empty


def _path(spool: Spool, name: str) -> str:
    return os.path.join(spool.path, name)


def _read(path: str) -> str | None:
    """The marker's line, or None when there is none (a folder or link put there is not one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _write(path: str, line: str, owner: int) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        if os.geteuid() == 0 and owner != 0:  # sudo mailgate queue drain: the daemon must read it
            os.fchown(fd, owner, -1)
        os.write(fd, (line + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def requested(spool: Spool) -> str | None:
    """The drain request's line (``requested_at=...``), or None when the spool is not draining."""
    return _read(_path(spool, MARKER))


def seen(spool: Spool) -> str | None:
    """The request line the running gateway last took up, or None."""
    return _read(_path(spool, SEEN))


def request(spool: Spool, now: float | None = None) -> tuple[str, bool]:
    """Ask the gateway to drain; (the request line, whether it is new)."""
    current = requested(spool)
    if current is not None:
        return current, False
    line = f"requested_at={time.time() if now is None else now:.3f}"
    _write(_path(spool, MARKER), line, spool.owner)
    return line, True


def cancel(spool: Spool) -> bool:
    """Take the drain request back; False when there was none."""
    return _remove(_path(spool, MARKER))


def requested_at(line: str) -> float | None:
    _, _, value = line.partition("requested_at=")
    try:
        return float(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Holding:
    """What the spool holds: the messages a drain must deliver, and what it leaves."""

    incoming: int
    active: int
    deferred: int
    dead: int
    quarantine: int
    hold: int = 0  # held by the operator: not delivered by a drain either

    @property
    def pending(self) -> int:
        return self.incoming + self.active + self.deferred


def holding(spool: Spool) -> Holding:
    return Holding(*(len(spool.ids(state)) for state in (*HOLDS, DEAD, QUARANTINE, HOLD)))


class DrainWatch:
    """The runner's view of the marker: what changed since its last look."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.line: str | None = None  # the request being served
        self.drained = False

    @property
    def draining(self) -> bool:
        return self.line is not None

    def look(self) -> str | None:
        """'started', 'resumed' or None: how the request changed since the last look."""
        line = requested(self.spool)
        if line is not None and line != self.line:
            self.line, self.drained = line, False
            _write(_path(self.spool, SEEN), line, self.spool.owner)
            return "started"
        if line is None and self.line is not None:
            self.line, self.drained = None, False
            _remove(_path(self.spool, SEEN))
            return "resumed"
        return None

    def finished(self, left: Holding) -> bool:
        """True once, when a drain has nothing left to deliver."""
        if not self.draining:
            return False
        if left.pending:
            self.drained = False
            return False
        if self.drained:
            return False
        self.drained = True
        return True
