"""Holding upstreams: ``mailgate queue hold --upstream NAME``, a file the runner reads. No reactor.

``held-upstreams`` in the spool's root lists the held upstreams, one name a line, written
as the drain marker is (a temp file, fsync, rename, fsync of the root; never through a link),
and given to the spool's user when root writes it (``sudo mailgate queue hold --upstream``), so
the daemon can read it. The runner reads it at each scan (every second) and again before each
MAIL, so the commands are safe while the daemon runs. While an upstream is held, the runner
starts no delivery whose next upstream (the first of the recipient's route that is configured)
is it: those recipients wait, they do not fail over, and their message waits in ``deferred/``
without a backoff or an expiry until the upstream is released (or is no longer configured: a
name that is not an upstream of the config holds nothing). The message's other recipients are
delivered as usual. A file that cannot be read (but is there) holds what it held at the last
read: a hold never lapses because of an unreadable file. The held messages themselves
(``hold/``, one message at a time) are `gateway.queue.spool`'s; `HoldWatch` is the runner's
view of both.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable

from gateway.audit.events import Event
from gateway.audit.log import AuditLog
from gateway.errors import MailgateError
from gateway.queue.spool import (
    HOLD,
    QUEUED,
    Envelope,
    EnvelopeInvalid,
    MessageGone,
    Spool,
    fsync_dir,
)

HELD = "held-upstreams"
MAX_SIZE = 64 * 1024


def _path(spool: Spool) -> str:
    return os.path.join(spool.path, HELD)


def valid_name(name: str) -> bool:
    """A name the file can hold: printable ASCII without spaces (every usual upstream name)."""
    return bool(name) and name.isascii() and name.isprintable() and " " not in name


class HoldsUnreadable(MailgateError):
    """``held-upstreams`` is there but cannot be read: what is held is not known."""


def held(spool: Spool) -> frozenset[str]:
    """The held upstreams: none when the file is absent, or is a link or not a regular file
    (not what mailgate writes); `HoldsUnreadable` when it is there but cannot be read."""
    path = _path(spool)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link: never followed
            return frozenset()
        raise HoldsUnreadable(
            f"{path}: cannot be read ({exc.strerror}); expected a file the gateway's user "
            "can read (mailgate queue hold --upstream writes it so)"
        ) from None
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
            return
        fsync_dir(spool.path)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        if os.geteuid() == 0 and spool.owner != 0:  # sudo mailgate ...: the daemon must read it
            os.fchown(fd, spool.owner, -1)
        os.write(fd, "".join(f"{name}\n" for name in listed).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(spool.path)


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


def waits_for(
    route: tuple[str, ...], upstreams: Iterable[str], configured: Callable[[str], bool]
) -> str | None:
    """The held upstream a recipient on `route` waits for: its next upstream, if that is held
    and configured (a held name the config no longer has holds nothing); else None."""
    hop = next_hop(route, configured)
    return hop if hop in upstreams and configured(hop) else None


class HoldWatch:
    """What the runner saw held at its last scan, and the audit of what changed since."""

    def __init__(self, spool: Spool, audit: AuditLog) -> None:
        self.spool = spool
        self.audit = audit
        self.messages: set[str] = set()  # in hold/
        self.upstreams: frozenset[str] = frozenset()  # in held-upstreams
        self.unreadable: str | None = None  # why held-upstreams could not be read (logged once)

    def start(self) -> None:
        """What is held at start (counted in ``queue.started``; not logged one by one)."""
        self.messages = set(self.spool.ids(HOLD))
        self.upstreams = self.current()

    def current(self) -> frozenset[str]:
        """The held upstreams now; when the file cannot be read, those of the last read (a
        ``gateway.error`` says so, once until it can be read again)."""
        try:
            now = held(self.spool)
        except HoldsUnreadable as exc:
            if self.unreadable is None:
                self.audit.event(
                    Event.GATEWAY_ERROR,
                    type="HoldsUnreadable",
                    error=f"{exc}; the upstreams held before stay held: "
                    f"{', '.join(sorted(self.upstreams)) or 'none'}",
                )
            self.unreadable = str(exc)
            return self.upstreams
        self.unreadable = None
        return now

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
        """The routes of `envelope`'s pending recipients whose next upstream is held (they wait),
        as ``held-upstreams`` says now: a hold made since the last scan keeps the round from
        contacting that upstream at all (one open of the file per round)."""
        upstreams = self.current()
        if not upstreams:
            return set()
        return {r.hops for r in envelope.pending if waits_for(r.hops, upstreams, configured)}

    def still_waiting(
        self, routes: Iterable[tuple[str, ...]], configured: Callable[[str], bool]
    ) -> bool:
        """Every one of `routes` (a parked message's) still waits for a held upstream."""
        return all(waits_for(route, self.upstreams, configured) for route in routes)

    def look_upstreams(self) -> list[str]:
        """Log ``upstream.held`` / ``upstream.released`` since the last look; the released ones."""
        now = self.current()
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
