"""Audit files on disk: find the current and rotated files, put them in order, stream their lines.

Rotated siblings of ``audit.jsonl`` are ``audit.jsonl.1``, ``audit.jsonl.2.gz``,
``audit.jsonl-20261128``, ``audit.jsonl-20261128.gz`` and the like (logrotate's
numbered and dated names); gzip files are recognised by their magic bytes. Files
are read one line at a time, never whole, and put in chain order by their first
record; the files of several instances (each its own chain) are grouped by name
(`chain_groups`) and their lines merged in time order (`merged`). A final line without a newline is still being written (or was torn by a
crash): it is not yielded, and `Scan.incomplete` says where it was.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from gateway.audit.chain import Head, parse_state
from gateway.errors import MailgateError

STATE_SUFFIX = ".chain"
_ROTATED = re.compile(r"(?:[.-][0-9][0-9_-]*)?(?:\.gz)?")
_GZIP_MAGIC = b"\x1f\x8b"


class AuditFileError(MailgateError):
    """An audit file cannot be read; the message names the file (and line) and what is wrong."""


class ChainStateError(AuditFileError):
    """The chain state file is missing, empty, corrupt or unreadable; the message names it."""


STATE_FORMAT = 'one line "mailgate audit chain v1 seq=N hash=<64 hex digits>"'


def state_path(path: str) -> str:
    """Where the writer keeps the chain head beside the audit file at `path`."""
    return path + STATE_SUFFIX


def read_state(path: str) -> Head:
    """The head the writer saved in the state file at `path`; `ChainStateError` says what is wrong."""
    data: bytes | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there must not hang us
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                data = os.read(fd, 257)
        finally:
            os.close(fd)
    except FileNotFoundError:
        problem = "is missing"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    else:
        problem = "is not a regular file"
    if data is not None:
        head = parse_state(data.decode("ascii", "replace")) if len(data) <= 256 else None
        if head is not None:
            return head
        found = data[:48].decode("ascii", "replace")
        problem = "is empty" if not data else f"is corrupt (found {found!r})"
    raise ChainStateError(f"{path}: the chain state {problem}; expected {STATE_FORMAT}")


def siblings(path: str) -> list[str]:
    """`path` (if it exists) and its rotated siblings in the same directory, unordered."""
    folder, name = os.path.split(os.path.abspath(path))
    try:
        entries = os.listdir(folder)
    except OSError as exc:
        raise AuditFileError(f"{folder}: cannot list the audit directory: {exc.strerror}") from None
    found = []
    for entry in sorted(entries):
        if entry.startswith(name) and _ROTATED.fullmatch(entry[len(name) :]):
            full = os.path.join(folder, entry)
            if os.path.isfile(full):
                found.append(os.path.join(os.path.dirname(path), entry))
    return found


def _open_binary(path: str) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file, decompressed reader); the raw file's position measures progress."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise AuditFileError(f"{path}: cannot open: {exc.strerror}") from None
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw, raw


def _decode(chunk: bytes) -> str:
    return chunk.decode("utf-8", "replace").rstrip("\r\n")


@dataclass(frozen=True)
class FirstRecord:
    path: str
    timestamp: str
    seq: int


def first_record(path: str) -> FirstRecord | None:
    """The ordering key of a file: its first record's timestamp and seq (None: no record yet).

    A file whose first 16 lines hold no JSON record is not an audit log: an error.
    """
    raw, reader = _open_binary(path)
    try:
        for count, chunk in enumerate(reader):
            if count >= 16:
                raise AuditFileError(
                    f"{path}: not an audit log (no JSON record in its first 16 lines)"
                )
            if not chunk.endswith(b"\n"):
                return None
            try:
                record = json.loads(chunk)
            except ValueError:
                continue
            if isinstance(record, dict):
                seq = record.get("seq")
                return FirstRecord(
                    path, str(record.get("timestamp", "")), seq if isinstance(seq, int) else 0
                )
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise AuditFileError(f"{path}: cannot read: {exc}") from None
    finally:
        raw.close()
    return None


_BASE = re.compile(r"(.*?)((?:[.-][0-9][0-9_-]*)?(?:\.gz)?)", re.DOTALL)


def chain_name(path: str) -> str:
    """The current file a rotated one belongs to: ``a/audit.jsonl.2.gz`` -> ``a/audit.jsonl``."""
    folder, name = os.path.split(path)
    match = _BASE.fullmatch(name)
    base = match.group(1) if match and match.group(1) else name
    return os.path.join(folder, base)


def chain_groups(paths: Sequence[str]) -> list[list[str]]:
    """The files given, grouped by the chain they hold: one per current file and its rotated
    siblings (the same folder and name), in the order each chain was first named.

    Each instance writes its own file, so each group is one instance's chain."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        key = os.path.abspath(chain_name(path))
        groups.setdefault(key, []).append(path)
    return list(groups.values())


def _time_key(line: tuple[str, int, str]) -> str:
    """A record's timestamp as written (ISO-8601 UTC, so text order is time order), cheaply."""
    text = line[2]
    if text.startswith('{"timestamp":"'):
        return text[14 : text.find('"', 14)]
    return ""


def merged(scans: Sequence[Iterable[tuple[str, int, str]]]) -> Iterator[tuple[str, int, str]]:
    """The lines of several instances' scans, merged in time order (each scan is in order already)."""
    return heapq.merge(*scans, key=_time_key)


def chain_order(paths: Sequence[str]) -> list[str]:
    """Oldest first, by each file's first record; files without any record are left out."""
    keyed = []
    for index, path in enumerate(paths):
        first = first_record(path)
        if first is not None:
            keyed.append(((first.timestamp, first.seq, index), path))
    return [path for _, path in sorted(keyed)]


def last_record(path: str, window: int = 65536) -> tuple[dict[str, Any] | None, bool]:
    """The last complete JSON record of a plain file, read from its end (cheap on any size),
    and whether the file ends in the middle of a line."""
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None, False
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None, False
        handle.seek(size - 1)
        torn = handle.read(1) != b"\n"
        start = size
        tail = b""
        while start > 0:
            start = max(0, start - window)
            handle.seek(start)
            tail = handle.read(size - start)
            complete = tail[: tail.rfind(b"\n") + 1] if torn else tail
            lines = complete.split(b"\n")[:-1]
            if start > 0:
                lines = lines[1:]  # the first piece may be the end of a longer line
            for line in reversed(lines[-16:]):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    return record, torn
            if len(lines) >= 16:
                break
        return None, torn


def last_line(path: str, window: int = 65536) -> str | None:
    """The last complete line of a file (a final line without its newline is not complete).

    A plain file is read from its end, so this is cheap on any size; a gzip file is streamed.
    """
    raw, reader = _open_binary(path)
    try:
        if reader is not raw:
            last = None
            for chunk in reader:
                if chunk.endswith(b"\n"):
                    last = chunk
            return _decode(last) if last is not None else None
        size = raw.seek(0, os.SEEK_END)
        step = window
        while True:
            start = max(0, size - step)
            raw.seek(start)
            tail = raw.read(size - start)
            end = tail.rfind(b"\n")  # where the last complete line ends
            if end < 0 and start == 0:
                return None  # not one complete line in the file
            cut = tail.rfind(b"\n", 0, end) if end > 0 else -1
            if end >= 0 and (cut >= 0 or start == 0):
                return _decode(tail[cut + 1 : end])
            step *= 2  # the last line is longer than what was read: look further back
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise AuditFileError(f"{path}: cannot read: {exc}") from None
    finally:
        raw.close()


class Progress:
    """'scanning FILE 41%' on stderr, at most twice a second, only when stderr is a terminal."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.clock = clock
        self._next = 0.0
        self._shown = False

    def update(self, path: str, done: int, total: int) -> None:
        if not self.enabled or self.clock() < self._next:
            return
        self._next = self.clock() + 0.5
        percent = 100 * done // total if total else 100
        self.stream.write(
            f"\rscanning {path}: {percent:3d}% ({done / 1e6:,.0f} of {total / 1e6:,.0f} MB)\x1b[K"
        )
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


@dataclass(frozen=True)
class Position:
    """Where a scan stopped in a file: after `lines` complete lines, at byte `offset`."""

    lines: int
    offset: int
    identity: tuple[int, int]  # (st_dev, st_ino): the same file, not just the same name


@dataclass
class Scan:
    """Stream (path, line number, text) over files in the order given; one file open at a time."""

    paths: Sequence[str]
    progress: Progress = field(default_factory=Progress)
    incomplete: list[tuple[str, int]] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)
    every: int = 4096  # lines between progress checks

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        try:
            for path in self.paths:
                yield from self._file(path)
        finally:
            self.progress.done()

    def _file(self, path: str) -> Iterator[tuple[str, int, str]]:
        raw, reader = _open_binary(path)
        stat = os.fstat(raw.fileno())
        number = offset = 0
        try:
            for chunk in reader:
                if not chunk.endswith(b"\n"):
                    self.incomplete.append((path, number + 1))
                    break
                number += 1
                offset += len(chunk)
                if number % self.every == 0:
                    self.progress.update(path, raw.tell(), stat.st_size)
                yield path, number, _decode(chunk)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise AuditFileError(f"{path}: cannot read after line {number}: {exc}") from None
        finally:
            raw.close()
            self.positions[path] = Position(number, offset, (stat.st_dev, stat.st_ino))


def follow(
    path: str,
    after: Position | None,
    *,
    poll: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[str, int, str]]:
    """Complete lines appended to `path` after `after` (a scan's end), forever; survives rotation.

    When the file is renamed away (logrotate ``create``) or truncated (``copytruncate``),
    the new file is read from its start. Stops only when the caller stops iterating
    (or on KeyboardInterrupt).
    """
    handle: IO[bytes] | None = None
    number = 0
    partial = b""
    try:
        while True:
            if handle is None:
                try:
                    handle = open(path, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    sleep(poll)
                    continue
                except OSError as exc:
                    raise AuditFileError(f"{path}: cannot open: {exc.strerror}") from None
                number, partial = 0, b""
                stat = os.fstat(handle.fileno())
                if (
                    after is not None
                    and after.identity == (stat.st_dev, stat.st_ino)
                    and after.offset <= stat.st_size
                ):
                    handle.seek(after.offset)
                    number = after.lines
                after = None
            chunk = handle.readline()
            if chunk:
                partial += chunk
                if partial.endswith(b"\n"):
                    number += 1
                    line, partial = partial, b""
                    yield path, number, _decode(line)
                continue
            if _replaced(path, handle):
                handle.close()
                handle = None
                continue
            sleep(poll)
    finally:
        if handle is not None:
            handle.close()


def _replaced(path: str, handle: IO[bytes]) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # renamed away and not yet re-created: keep reading the old one for a while
    mine = os.fstat(handle.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or now.st_size < handle.tell()
