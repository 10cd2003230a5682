"""Holding upstreams: ``mailgate queue hold --upstream NAME``, a file the runner reads. No reactor.

``held-upstreams`` in the spool's root lists the held upstreams, one name a line, written
as the drain marker is (a temp file, fsync, rename; never through a link). The runner reads it
at each scan (every second), so the commands are safe while the daemon runs. While an upstream
is held, the runner starts no delivery whose next upstream (the first of the recipient's route
that is configured) is it: those recipients wait, they do not fail over, and their message
waits in ``deferred/`` without a backoff or an expiry until the upstream is released. The
message's other recipients are delivered as usual. The held messages themselves (``hold/``,
one message at a time) are `gateway.queue.spool`'s; `HoldWatch` is the runner's view of both.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from gateway.audit.events import Event
from gateway.audit.log import AuditLog
from gateway.queue.spool import HOLD, QUEUED, Envelope, EnvelopeInvalid, MessageGone, Spool

HELD = "held-upstreams"
MAX_SIZE = 64 * 1024


def _path(spool: Spool) -> str:
    return os.path.join(spool.path, HELD)


def valid_name(name: str) -> bool:
    """A name the file can hold: printable ASCII without spaces (every usual upstream name)."""
    return bool(name) and name.isascii() and name.isprintable() and " " not in name


def held(spool: Spool) -> frozenset[str]:
    """The held upstreams (none when the file is absent, or is not a regular file)."""
    try:
        fd = os.open(_path(spool), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return frozenset()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return frozenset()
        text = os.read(fd, MAX_SIZE).decode("ascii", "replace")
    finally:
        os.close(fd)
    return frozenset(n for n in (line.strip() for line in text.splitlines()) if valid_name(n))


def _write(spool: Spool, names: Iterable[str]) -> None:
    path = _path(spool)
    listed = sorted(set(names))
    if not listed:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, "".join(f"{name}\n" for name in listed).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def hold(spool: Spool, name: str) -> bool:
    """Hold `name`; False when it was held already."""
    current = held(spool)
    if name in current:
        return False
    _write(spool, current | {name})
    return True


def release(spool: Spool, names: Iterable[str]) -> list[str]:
    """Release `names`; the ones that were held."""
    current = held(spool)
    released = sorted(current & set(names))
    if released:
        _write(spool, current - set(released))
    return released


def next_hop(route: tuple[str, ...], configured: Callable[[str], bool]) -> str:
    """The upstream a delivery over `route` starts with: its first configured one (as the runner)."""
    return next((hop for hop in route if configured(hop)), route[0])


class HoldWatch:
    """What the runner saw held at its last scan, and the audit of what changed since."""

    def __init__(self, spool: Spool, audit: AuditLog) -> None:
        self.spool = spool
        self.audit = audit
        self.messages: set[str] = set()  # in hold/
        self.upstreams: frozenset[str] = frozenset()  # in held-upstreams

    def start(self) -> None:
        """What is held at start (counted in ``queue.started``; not logged one by one)."""
        self.messages = set(self.spool.ids(HOLD))
        self.upstreams = held(self.spool)

    def look_messages(self) -> list[str]:
        """Log ``message.held`` / ``message.released`` since the last look; the newly held ids."""
        now = set(self.spool.ids(HOLD))
        came = sorted(now - self.messages)
        for queue_id in came:
            try:
                envelope = self.spool.load(HOLD, queue_id)
            except (MessageGone, EnvelopeInvalid, ValueError, OSError):
                envelope = None  # `queue list` and `queue show` say what is wrong with it
            self.audit.event(
                Event.MESSAGE_HELD,
                queue_id=queue_id,
                message_id=envelope.message_id if envelope else None,
                recipients=[r.address for r in envelope.pending] if envelope else [],
                reason="held by the operator (mailgate queue hold): not delivered until released",
            )
        for queue_id in sorted(self.messages - now):
            state = self.spool.locate(queue_id)
            if state in QUEUED:  # not deleted: released (trash/ is logged as message.deleted)
                self.audit.event(Event.MESSAGE_RELEASED, queue_id=queue_id, state=state)
        self.messages = now
        return came

    def waiting(
        self, envelope: Envelope, configured: Callable[[str], bool]
    ) -> set[tuple[str, ...]]:
        """The routes of `envelope`'s pending recipients whose next upstream is held (they wait)."""
        if not self.upstreams:
            return set()
        return {r.hops for r in envelope.pending if next_hop(r.hops, configured) in self.upstreams}

    def look_upstreams(self) -> list[str]:
        """Log ``upstream.held`` / ``upstream.released`` since the last look; the released ones."""
        now = held(self.spool)
        for name in sorted(now - self.upstreams):
            self.audit.event(
                Event.UPSTREAM_HELD,
                upstream=name,
                reason="held by the operator (mailgate queue hold --upstream): its queued "
                "recipients wait",
            )
        released = sorted(self.upstreams - now)
        for name in released:
            self.audit.event(Event.UPSTREAM_RELEASED, upstream=name)
        self.upstreams = now
        return released
