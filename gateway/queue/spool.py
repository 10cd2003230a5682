"""The spool: messages and their per-recipient state, durably on disk. No reactor.

Layout under ``[queue] path`` — one folder per state, one folder per message::

    incoming/ID/   being received: never delivered; removed at start-up
    active/ID/     committed and due now (or being delivered)
    deferred/ID/   committed, waiting for its next attempt
    dead/ID/       dead letters: at least one recipient failed permanently
    trash/ID/      deleted by the operator; the runner logs and removes it
    done/ID/       every recipient final; removed right away
    quarantine/ID/ its envelope or files are not what mailgate writes: never delivered
    hold/ID/       held by the operator (``mailgate queue hold``): never delivered until released

Each message folder holds ``body`` (the message exactly as received, CRLF
lines, without SMTP dot-stuffing) and ``envelope.json`` (sender, recipients and
their delivery state; format 2, `gateway.queue.envelope`: a journal of whole
envelope lines). A message is committed by fsyncing both files and the folder,
renaming ``incoming/ID`` to ``active/ID`` (atomic) and fsyncing ``active/`` —
once for every message committed together (`gateway.queue.writer.commit_all`, the
group commit). A
state change appends one line to ``envelope.json`` (fdatasync when durable):
no temp file, no rename; the last whole line is the envelope, so a crash leaves
the old or the new version. A format 1 envelope (one document) is converted on
its first change through ``envelope.json.tmp``, fsync, rename, folder fsync, and
a journal longer than `COMPACT_AT` is compacted the same way.
State changes between folders are single renames, so a message is in exactly
one state at any moment and a crash leaves it in the old one or the new one.
A message the operator holds during its delivery round (``active/`` to ``hold/``) keeps
the round's record: `save` for ``active/`` follows it to ``hold/``, and the round's
move to ``deferred/`` leaves it held, to ``done/`` or ``dead/`` takes it from ``hold/``.
The in-flight mark before MAIL does not follow (``follow_hold=False``): held before MAIL,
nothing is sent.

The spool is trusted only as far as `gateway.queue.trust` allows: its folders
are checked at `create` (`SpoolUnsafe` names each unsafe one), message folders
and files are opened without following links, and `load` reads an envelope
strictly (`gateway.queue.envelope`): anything else raises `EnvelopeInvalid`,
and the runner moves the message to ``quarantine/`` once.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator

from gateway.queue import trust
from gateway.queue.envelope import (
    DELIVERED,
    FAILED,
    FORMAT_VERSION,
    PENDING,
    Envelope,
    EnvelopeInvalid,
    RecipientState,
    valid_id,
)
from gateway.queue.trust import SpoolUnsafe

__all__ = [
    "ACTIVE",
    "BODY",
    "CHUNK",
    "DEAD",
    "DEFERRED",
    "DELIVERED",
    "DONE",
    "ENVELOPE",
    "FAILED",
    "FOLDERS",
    "FORMAT_VERSION",
    "HOLD",
    "INCOMING",
    "MAX_ENVELOPE",
    "PENDING",
    "QUARANTINE",
    "QUEUED",
    "TRASH",
    "Envelope",
    "EnvelopeInvalid",
    "MessageGone",
    "RecipientState",
    "Spool",
    "SpoolUnsafe",
    "new_id",
    "read_headers",
    "read_lines",
    "valid_id",
]

INCOMING, ACTIVE, DEFERRED, DEAD, TRASH, DONE, QUARANTINE, HOLD = (
    "incoming",
    "active",
    "deferred",
    "dead",
    "trash",
    "done",
    "quarantine",
    "hold",
)
FOLDERS = (INCOMING, ACTIVE, DEFERRED, DEAD, TRASH, DONE, QUARANTINE, HOLD)
QUEUED = (ACTIVE, DEFERRED)  # states a message waits for delivery in
BODY, ENVELOPE = "body", "envelope.json"
CHUNK = 64 * 1024
MAX_ENVELOPE = 16 * 1024 * 1024  # far above any envelope mailgate writes
COMPACT_AT = 256 * 1024  # a journal this long is rewritten as one line at the next change


class MessageGone(Exception):
    """The message is no longer where it was (deleted, retried or requeued by the operator)."""


def new_id(now: float | None = None) -> str:
    """A queue id: sortable by arrival (microseconds, hex) plus 40 random bits."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:014x}{secrets.token_hex(5)}"


def fsync_dir(path: str) -> None:
    """fsync a folder: the renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, dir_fd: int | None = None) -> None:
    """Write and fsync a file (never through a symbolic link put in its place)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: str) -> None:
        self.path = path
        self._owner: int | None = None

    @property
    def owner(self) -> int:
        """The uid the spool's folders and files must belong to (`gateway.queue.trust`)."""
        if self._owner is None:
            self._owner = trust.spool_owner(self.path)
        return self._owner

    def folder(self, state: str, queue_id: str | None = None) -> str:
        return (
            os.path.join(self.path, state, queue_id) if queue_id else os.path.join(self.path, state)
        )

    def exists(self) -> bool:
        return os.path.isdir(self.folder(ACTIVE))

    def create(self) -> None:
        """Create the folders (mode 0700), then `check` them; an error names the path."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)  # not left to the umask
        for state in FOLDERS:
            os.makedirs(self.folder(state), mode=0o700, exist_ok=True)
        self.check()

    def problems(self) -> list[str]:
        """Why the spool's folders cannot be trusted, each naming ``queue.path`` and the folder."""
        self._owner = None  # looked at afresh
        return trust.folder_problems(self.path, FOLDERS, self.owner)

    def check(self) -> None:
        """`SpoolUnsafe` unless only the spool's user can change its folders."""
        problems = self.problems()
        if problems:
            raise SpoolUnsafe(problems)

    # --- reading ---------------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        try:
            names = os.listdir(self.folder(state))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if valid_id(n))

    def locate(self, queue_id: str) -> str | None:
        """The state folder a message is in now, or None."""
        for state in (ACTIVE, DEFERRED, HOLD, DEAD, QUARANTINE, TRASH, INCOMING):
            if os.path.lexists(self.folder(state, queue_id)):
                return state
        return None

    def load(self, state: str, queue_id: str) -> Envelope:
        """The envelope of a message, checked; `MessageGone` if it moved, else `EnvelopeInvalid`.

        The folder and its two files are opened without following links and must be
        what mailgate writes (`gateway.queue.trust`); the envelope is read strictly
        (`gateway.queue.envelope`), its id the folder's name.
        """
        folder = self.folder(state, queue_id)
        try:
            fd = trust.open_folder(folder, self.owner)
        except FileNotFoundError:
            raise MessageGone(queue_id) from None
        except trust.SpoolFileRefused as exc:
            raise EnvelopeInvalid([f"{state}/{queue_id}: {exc.strerror}"]) from None
        where = f"{state}/{queue_id}/"
        try:
            raw = trust.read_file(fd, ENVELOPE, self.owner, MAX_ENVELOPE, shown=where + ENVELOPE)
            os.close(trust.open_file(fd, BODY, self.owner, shown=where + BODY))
        except FileNotFoundError as exc:
            if not os.path.lexists(folder):
                raise MessageGone(queue_id) from None
            raise EnvelopeInvalid([f"{exc.filename}: missing"]) from None
        except trust.SpoolFileRefused as exc:
            raise EnvelopeInvalid([f"{exc.filename}: {exc.strerror}"]) from None
        finally:
            os.close(fd)
        return Envelope.from_json(raw, queue_id)

    def body_path(self, state: str, queue_id: str) -> str:
        """The body's path (for ``active/``: in ``hold/`` if the operator held it meanwhile)."""
        folder = self.folder(state, queue_id)
        if state == ACTIVE and not os.path.lexists(folder) and self._held(queue_id):
            folder = self.folder(HOLD, queue_id)
        return os.path.join(folder, BODY)

    # --- changing ------------------------------------------------------------------

    def save(
        self, state: str, envelope: Envelope, *, durable: bool = True, follow_hold: bool = True
    ) -> None:
        """Record the envelope: one line appended to its journal (`_append`); a format 1
        envelope, or a journal past `COMPACT_AT`, is rewritten through a temp file instead.
        `MessageGone` if it was moved away — for ``active/`` with ``follow_hold=False``, also
        when the operator held it (the mark before MAIL: a held message is not sent).

        Always the old or the new version survives a crash. With ``durable=False``
        a crash may bring back the old version (used where that only costs a
        shorter backoff, never a lost or duplicated delivery).
        """
        folder = self.folder(state, envelope.id)
        record = envelope.to_record()
        try:
            fd = trust.open_folder(folder)
        except FileNotFoundError:
            if state != ACTIVE or not follow_hold or not self._held(envelope.id):
                raise MessageGone(envelope.id) from None
            fd = self._open_held(envelope.id)  # held during its round: the record follows it
        try:
            if not self._append(fd, record, durable=durable):
                write_file(ENVELOPE + ".tmp", record, dir_fd=fd)
                os.replace(ENVELOPE + ".tmp", ENVELOPE, src_dir_fd=fd, dst_dir_fd=fd)
                os.fsync(fd)  # the first change of a format 1 envelope, or a compaction
        except FileNotFoundError:
            raise MessageGone(envelope.id) from None
        finally:
            os.close(fd)

    def present(self, state: str, queue_id: str) -> bool:
        """The message's folder is in `state` now (no link followed)."""
        return os.path.lexists(self.folder(state, queue_id))

    def _held(self, queue_id: str) -> bool:
        return os.path.lexists(self.folder(HOLD, queue_id))

    def _open_held(self, queue_id: str) -> int:
        try:
            return trust.open_folder(self.folder(HOLD, queue_id))
        except FileNotFoundError:
            raise MessageGone(queue_id) from None

    def convert_back(self, state: str, envelope: Envelope) -> None:
        """Rewrite the envelope in format 1 (one document; for a rollback, the daemon stopped)."""
        try:
            fd = trust.open_folder(self.folder(state, envelope.id))
        except FileNotFoundError:
            raise MessageGone(envelope.id) from None
        try:
            write_file(ENVELOPE + ".tmp", envelope.to_json(), dir_fd=fd)
            os.replace(ENVELOPE + ".tmp", ENVELOPE, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, folder_fd: int, record: bytes, *, durable: bool) -> bool:
        """Append `record` to a format 2 journal; False when it must be rewritten instead.

        The journal is opened without following a link and must be a regular file of
        ours with one link (`trust.open_file`'s checks). Each record is written after
        a newline, so it never joins the tail of an append a crash cut short.
        """
        fd = trust.open_file(folder_fd, ENVELOPE, self.owner, write=True)
        try:
            size = os.fstat(fd).st_size
            if size > COMPACT_AT or os.pread(fd, 2, 0) != b'{"':  # format 1 starts "{\n"
                return False
            data = memoryview(b"\n" + record)
            while data:
                data = data[os.write(fd, data) :]
            if durable:
                os.fdatasync(fd)
            return True
        finally:
            os.close(fd)

    def move(self, queue_id: str, source: str, target: str, *, durable: bool = True) -> None:
        """One atomic rename between state folders; `MessageGone` if it is not in `source`.

        ``durable=False`` skips the folder fsyncs: for moves where a crash that
        undoes them is harmless (active <-> deferred, or to done/ and dead/, which
        the runner redoes from the envelope at the next start).
        """
        try:
            os.rename(self.folder(source, queue_id), self.folder(target, queue_id))
        except FileNotFoundError:
            if source != ACTIVE or target not in (DEFERRED, DONE, DEAD) or not self._held(queue_id):
                raise MessageGone(queue_id) from None
            if target == DEFERRED:
                return  # held during its round: it waits in hold/ instead
            source = HOLD  # finished during its round: nothing is left to hold
            try:
                os.rename(self.folder(HOLD, queue_id), self.folder(target, queue_id))
            except FileNotFoundError:
                raise MessageGone(queue_id) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise MessageGone(queue_id) from None
            raise
        if durable:
            fsync_dir(self.folder(target))
            fsync_dir(self.folder(source))

    def quarantine(self, state: str, queue_id: str) -> None:
        """Move a message that failed `load` out of the way for good (one fsynced rename)."""
        os.makedirs(self.folder(QUARANTINE), mode=0o700, exist_ok=True)
        self.move(queue_id, state, QUARANTINE)

    def remove(self, state: str, queue_id: str) -> None:
        path = self.folder(state, queue_id)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)  # a link or a file put where a message folder belongs
                return
        except OSError:
            return
        try:  # what mailgate writes: two unlinks and a rmdir, not a walk of the folder
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                for name in (BODY, ENVELOPE):
                    try:
                        os.unlink(name, dir_fd=fd)  # never follows: a link is removed itself
                    except FileNotFoundError:
                        pass
            finally:
                os.close(fd)
            os.rmdir(path)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)  # anything else in it (a .tmp, a planted file)

    def clear(self, state: str) -> list[str]:
        """Remove every message in `state` (used for incoming/ and done/ at start-up)."""
        removed = self.ids(state)
        for queue_id in removed:
            self.remove(state, queue_id)
        return removed


def read_lines(path: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """The body file as regions of whole lines, each starting at a line start (for dot-stuffing).

    Opened without following links (`trust.open_body`): a ``body`` symlink is an OSError.
    """
    with trust.open_body(path) as handle:
        carry = b""
        while True:
            data = handle.read(chunk)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield data[:cut]
        if carry:
            yield carry + b"\r\n"


def read_headers(path: str, limit: int = 65536) -> bytes:
    """The header section of a stored body (up to `limit` octets), for a DSN (never via a link)."""
    with trust.open_body(path) as handle:
        head = handle.read(limit)
    end = head.find(b"\r\n\r\n")
    if head.startswith(b"\r\n"):
        return b""
    return head[: end + 2] if end >= 0 else head[: head.rfind(b"\r\n") + 2]
