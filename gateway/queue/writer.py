"""Writing a new message into the spool: ``incoming/ID/`` received, then committed to ``active/``.

`SpoolWriter` receives one body into ``incoming/ID/``; its `commit` fsyncs the body, the
envelope and the message folder and renames it into ``active/``; `commit_all` does that for
a batch and fsyncs ``active/`` once for them all (the group commit, driven from the reactor by
`gateway.queue.commit`). `store` commits a small message built in memory (a DSN). No reactor.
The layout and the durability rules are `gateway.queue.spool`'s.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from typing import BinaryIO

from gateway.queue import spool
from gateway.queue.envelope import Envelope
from gateway.queue.spool import ACTIVE, BODY, ENVELOPE, INCOMING, Spool


class SpoolWriter:
    """Receives one message body into incoming/ID/ and commits it to active/ID/."""

    def __init__(self, target: Spool, queue_id: str) -> None:
        self.spool = target
        self.id = queue_id
        self.folder = target.folder(INCOMING, queue_id)
        self.error: OSError | None = None
        self.size = 0  # octets written: the message as it will be delivered
        self._file: BinaryIO | None = None
        self.grouped = False  # committed by `commit_all`, which fsyncs active/ once per batch
        self.renamed = False  # in active/ (durable once active/ is fsynced)
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
        """Body fsync, envelope fsync, folder fsync, rename into active/, active/ fsync.

        A writer in a group commit (`grouped`) stops after the rename: `commit_all`
        fsyncs ``active/`` once for the whole batch.
        """
        if self.error is not None:
            raise self.error
        assert self._file is not None
        handle, self._file = self._file, None
        try:
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
        spool.write_file(os.path.join(self.folder, ENVELOPE), envelope.to_record())
        spool.fsync_dir(self.folder)
        os.rename(self.folder, self.spool.folder(ACTIVE, self.id))
        self.renamed = True
        if not self.grouped:
            self.publish()

    def publish(self) -> None:
        """fsync ``active/``: the rename is durable. If that fails, take the message back."""
        try:
            spool.fsync_dir(self.spool.folder(ACTIVE))
        except OSError:
            # Not durable, so the app will hear 452: take it back, or it would be delivered too.
            self.take_back()
            raise

    def take_back(self) -> None:
        if self.renamed:
            os.rename(self.spool.folder(ACTIVE, self.id), self.folder)
            self.renamed = False

    def discard(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                handle.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def commit_all(batch: list[tuple[Callable[[], None], SpoolWriter]]) -> list[OSError | None]:
    """Commit several messages with one fsync of ``active/``: the group commit.

    Each `commit` (the message's `SpoolWriter.commit`, its writer `grouped`) fsyncs the body,
    the envelope and the message folder and renames it into ``active/``; then ``active/`` is
    fsynced once for them all. Returns an error (or None) per message, in order; a message
    with an error was not committed (its folder is back in ``incoming/`` if it had been
    renamed), so its app must hear ``452``.
    """
    errors: list[OSError | None] = [None] * len(batch)
    for n, (commit, writer) in enumerate(batch):
        writer.grouped = True
        try:
            commit()
        except OSError as exc:
            errors[n] = exc
        except Exception as exc:  # noqa: BLE001 - our bug: this message alone is not committed
            errors[n] = OSError(errno.EIO, f"internal error ({type(exc).__name__})")
            try:
                writer.take_back()
            except OSError:
                pass
    renamed = [(n, writer) for n, (_, writer) in enumerate(batch) if writer.renamed]
    if renamed:
        try:
            spool.fsync_dir(renamed[0][1].spool.folder(ACTIVE))
        except OSError as exc:
            for n, writer in renamed:
                errors[n] = exc
                try:
                    writer.take_back()
                except OSError:
                    pass
    return errors


def store(target: Spool, envelope: Envelope, body: bytes) -> None:
    """Commit a small message built in memory (a DSN) straight into active/."""
    writer = SpoolWriter(target, envelope.id)
    try:
        writer.write(body)
        writer.commit(envelope)
    except BaseException:
        writer.discard()
        raise
