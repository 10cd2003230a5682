"""The spool: messages and their per-recipient state, durably on disk. No reactor.

Layout under ``[queue] path`` — one folder per state, one folder per message::

    incoming/ID/   being received: never delivered; removed at start-up
    active/ID/     committed and due now (or being delivered)
    deferred/ID/   committed, waiting for its next attempt
    dead/ID/       dead letters: at least one recipient failed permanently
    trash/ID/      deleted by the operator; the runner logs and removes it
    done/ID/       every recipient final; removed right away

Each message folder holds ``body`` (the message exactly as received, CRLF
lines, without SMTP dot-stuffing) and ``envelope.json`` (sender, recipients and
their delivery state). A message is committed by fsyncing both files and the
folder, renaming ``incoming/ID`` to ``active/ID`` (atomic) and fsyncing both
parents. The envelope is rewritten through ``envelope.json.tmp``, fsync,
rename, folder fsync, so it is always either the old or the new version.
State changes between folders are single renames, so a message is in exactly
one state at any moment and a crash leaves it in the old one or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

INCOMING, ACTIVE, DEFERRED, DEAD, TRASH, DONE = (
    "incoming",
    "active",
    "deferred",
    "dead",
    "trash",
    "done",
)
FOLDERS = (INCOMING, ACTIVE, DEFERRED, DEAD, TRASH, DONE)
QUEUED = (ACTIVE, DEFERRED)  # states a message waits for delivery in
BODY, ENVELOPE = "body", "envelope.json"
FORMAT_VERSION = 1
CHUNK = 64 * 1024

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class MessageGone(Exception):
    """The message is no longer where it was (deleted, retried or requeued by the operator)."""


@dataclass
class RecipientState:
    address: str
    upstream: str  # the first upstream of the route (the one named in the audit when none was used)
    rule: str | None = None
    status: str = PENDING
    attempts: int = 0
    last_reply: str | None = None
    last_attempt: float | None = None
    in_flight: bool = False  # set while the upstream may be accepting it (the duplicate window)
    bounced: bool = False
    expired: bool = False  # failed because max_age was reached, not by a 5xx
    route: list[str] = field(default_factory=list)  # failover order; empty means [upstream]

    @property
    def hops(self) -> tuple[str, ...]:
        return tuple(self.route) or (self.upstream,)


@dataclass
class Envelope:
    id: str
    sender: str
    recipients: list[RecipientState]
    received: float
    mail_body: str | None = None  # "8BITMIME" or "7BIT" as given at MAIL
    size: int = 0
    sha256: str | None = None
    message_id: str | None = None
    session_id: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    attempts: int = 0
    next_attempt: float = 0.0
    requeued: float | None = None  # the age limit counts from here after `queue requeue`
    bounce_of: str | None = None  # this is a DSN for that queue id
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def age_base(self) -> float:
        return self.requeued if self.requeued is not None else self.received

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def last_reply(self) -> str | None:
        tried = [r for r in self.recipients if r.last_attempt is not None]
        return max(tried, key=lambda r: r.last_attempt or 0).last_reply if tried else None

    def to_json(self) -> bytes:
        data = {"version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(data, ensure_ascii=True, indent=1).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        data = json.loads(raw)
        if data.pop("version", None) != FORMAT_VERSION:
            raise ValueError("unknown spool format version")
        recipients = [RecipientState(**r) for r in data.pop("recipients")]
        return cls(recipients=recipients, **data)


def new_id(now: float | None = None) -> str:
    """A queue id: sortable by arrival (microseconds, hex) plus 40 random bits."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:014x}{secrets.token_hex(5)}"


_HEX = frozenset("0123456789abcdef")


def valid_id(text: str) -> bool:
    return 8 <= len(text) <= 64 and _HEX.issuperset(text)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    """Write and fsync a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(folder: str, name: str, data: bytes, *, durable: bool = True) -> None:
    """Replace folder/name through a fsynced temp file; `durable` also fsyncs the folder (the rename)."""
    temp = os.path.join(folder, name + ".tmp")
    _write_file(temp, data)
    os.replace(temp, os.path.join(folder, name))
    if durable:
        _fsync_dir(folder)


class Spool:
    def __init__(self, path: str) -> None:
        self.path = path

    def folder(self, state: str, queue_id: str | None = None) -> str:
        return (
            os.path.join(self.path, state, queue_id) if queue_id else os.path.join(self.path, state)
        )

    def exists(self) -> bool:
        return os.path.isdir(self.folder(ACTIVE))

    def create(self) -> None:
        """Create the folders (mode 0700); an error names the path."""
        for state in FOLDERS:
            os.makedirs(self.folder(state), mode=0o700, exist_ok=True)

    # --- reading ---------------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        try:
            names = os.listdir(self.folder(state))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if valid_id(n))

    def locate(self, queue_id: str) -> str | None:
        """The state folder a message is in now, or None."""
        for state in (ACTIVE, DEFERRED, DEAD, TRASH, INCOMING):
            if os.path.isdir(self.folder(state, queue_id)):
                return state
        return None

    def load(self, state: str, queue_id: str) -> Envelope:
        try:
            with open(os.path.join(self.folder(state, queue_id), ENVELOPE), "rb") as handle:
                return Envelope.from_json(handle.read())
        except FileNotFoundError:
            raise MessageGone(queue_id) from None

    def body_path(self, state: str, queue_id: str) -> str:
        return os.path.join(self.folder(state, queue_id), BODY)

    # --- changing ------------------------------------------------------------------

    def save(self, state: str, envelope: Envelope, *, durable: bool = True) -> None:
        """Rewrite the envelope atomically; `MessageGone` if it was moved away.

        Always the old or the new version survives a crash. With ``durable=False``
        a crash may bring back the old version (used where that only costs a
        shorter backoff, never a lost or duplicated delivery).
        """
        folder = self.folder(state, envelope.id)
        if not os.path.isdir(folder):
            raise MessageGone(envelope.id)
        try:
            _write_atomic(folder, ENVELOPE, envelope.to_json(), durable=durable)
        except FileNotFoundError:
            raise MessageGone(envelope.id) from None

    def move(self, queue_id: str, source: str, target: str, *, durable: bool = True) -> None:
        """One atomic rename between state folders; `MessageGone` if it is not in `source`.

        ``durable=False`` skips the folder fsyncs: for moves where a crash that
        undoes them is harmless (active <-> deferred, or to done/ and dead/, which
        the runner redoes from the envelope at the next start).
        """
        try:
            os.rename(self.folder(source, queue_id), self.folder(target, queue_id))
        except FileNotFoundError:
            raise MessageGone(queue_id) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise MessageGone(queue_id) from None
            raise
        if durable:
            _fsync_dir(self.folder(target))
            _fsync_dir(self.folder(source))

    def remove(self, state: str, queue_id: str) -> None:
        shutil.rmtree(self.folder(state, queue_id), ignore_errors=True)

    def clear(self, state: str) -> list[str]:
        """Remove every message in `state` (used for incoming/ and done/ at start-up)."""
        removed = self.ids(state)
        for queue_id in removed:
            self.remove(state, queue_id)
        return removed

    def store(self, envelope: Envelope, body: bytes) -> None:
        """Commit a small message built in memory (a DSN) straight into active/."""
        writer = SpoolWriter(self, envelope.id)
        try:
            writer.write(body)
            writer.commit(envelope)
        except BaseException:
            writer.discard()
            raise


class SpoolWriter:
    """Receives one message body into incoming/ID/ and commits it to active/ID/."""

    def __init__(self, spool: Spool, queue_id: str) -> None:
        self.spool = spool
        self.id = queue_id
        self.folder = spool.folder(INCOMING, queue_id)
        self.error: OSError | None = None
        self.size = 0  # octets written: the message as it will be delivered
        self._file: BinaryIO | None = None
        os.mkdir(self.folder, 0o700)
        try:
            fd = os.open(
                os.path.join(self.folder, BODY), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            self._file = os.fdopen(fd, "wb")
        except OSError:
            self.discard()
            raise

    def write(self, content: bytes) -> None:
        """Append content; the first error is kept and later writes are skipped."""
        if self.error is not None or self._file is None:
            return
        try:
            self._file.write(content)
            self.size += len(content)
        except OSError as exc:
            self.error = exc

    def commit(self, envelope: Envelope) -> None:
        """Body fsync, envelope fsync, folder fsync, rename into active/, active/ fsync."""
        if self.error is not None:
            raise self.error
        assert self._file is not None
        handle, self._file = self._file, None
        try:
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
        _write_file(os.path.join(self.folder, ENVELOPE), envelope.to_json())
        _fsync_dir(self.folder)
        committed = self.spool.folder(ACTIVE, self.id)
        os.rename(self.folder, committed)
        try:
            _fsync_dir(self.spool.folder(ACTIVE))
        except OSError:
            # Not durable, so the app will hear 452: take it back, or it would be delivered too.
            os.rename(committed, self.folder)
            raise

    def discard(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                handle.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def read_lines(path: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """The body file as regions of whole lines, each starting at a line start (for dot-stuffing)."""
    with open(path, "rb") as handle:
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
    """The header section of a stored body (up to `limit` octets), for a DSN."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    end = head.find(b"\r\n\r\n")
    if head.startswith(b"\r\n"):
        return b""
    return head[: end + 2] if end >= 0 else head[: head.rfind(b"\r\n") + 2]
