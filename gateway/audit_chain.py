"""The audit hash chain: seal each record to the one before it, and check the links.

Every record carries three fields at its end:

- ``seq``: 1, 2, 3, ... counted across restarts, reopens and rotation;
- ``prev``: the ``hash`` of the record before (64 zeros for the first record of a chain);
- ``hash``: hex SHA-256 over ``prev`` (64 ASCII hex digits) followed by the record's
  canonical JSON *without* ``hash`` (keys sorted, no whitespace, ASCII only).

A record deleted, changed, inserted or moved breaks a link or a hash. `ChainCheck`
reads records in order and reports each break with its file, line and what was
expected. Pure: no I/O, no reactor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
FIELDS = ("seq", "prev", "hash")


def _plain(value: object) -> str:
    return str(value)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes the hash covers: `record` without ``hash``, keys sorted, compact, ASCII."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":"),
                      default=_plain).encode("ascii")


def digest(record: Mapping[str, Any]) -> str:
    """The hash `record` should carry, computed from its ``prev`` and its content."""
    prev = str(record.get("prev", ""))
    return hashlib.sha256(prev.encode("ascii", "replace") + canonical(record)).hexdigest()


@dataclass(frozen=True)
class Head:
    """The end of a chain: what the next record links to."""

    seq: int
    hash: str


START = Head(0, GENESIS)


def render(record: dict[str, Any]) -> str:
    """One JSON line in the record's own key order (people read it) with no control characters."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_plain)


def seal(record: dict[str, Any], head: Head) -> tuple[str, Head]:
    """Add ``seq``, ``prev`` and ``hash`` to `record` after `head`; return its line and the new head."""
    for name in FIELDS:
        record.pop(name, None)
    record["seq"] = head.seq + 1
    record["prev"] = head.hash
    record["hash"] = digest(record)
    return render(record), Head(record["seq"], record["hash"])


def head_of(record: Mapping[str, Any]) -> Head | None:
    """The head a sealed record leaves, or None when it carries no well-formed chain fields."""
    seq, prev, hash_ = record.get("seq"), record.get("prev"), record.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return None
    if not (_is_hex(prev) and _is_hex(hash_)):
        return None
    return Head(seq, str(hash_))


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# --- checking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Break:
    """One place where the chain does not hold. `kind` is stable; `text` is for people."""

    where: Location
    kind: str  # not-json, unchained, changed, deleted, reordered, duplicated, inserted, restarted, truncated
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


class DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise DuplicateKey(f"key {key!r} appears twice")
        record[key] = value
    return record


def parse_strict(text: str) -> dict[str, Any]:
    """Parse one record; a key that appears twice is an error (it could hide an edit)."""
    record = json.loads(text, object_pairs_hook=_no_duplicates)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def _short(hash_: str) -> str:
    return hash_[:12] + "…"


@dataclass
class ChainCheck:
    """Feed records in order with `line()`; read `breaks`, `verified` and `head` at the end.

    Memory is bounded: at most `keep` breaks are kept (all are counted) and at most
    `keep` missing sequence numbers are remembered to recognise a moved record.
    """

    allow_restarts: bool = False
    keep: int = 1000
    breaks: list[Break] = field(default_factory=list)
    problems: int = 0
    verified: int = 0
    restarts: int = 0
    head: Head | None = None
    first: Head | None = None
    first_prev: str | None = None
    _head_at: Location | None = None
    _missing: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (break index, gap size)

    def _report(self, where: Location, kind: str, text: str) -> None:
        self.problems += 1
        if len(self.breaks) < self.keep:
            self.breaks.append(Break(where, kind, text))

    def line(self, source: str, number: int, text: str) -> None:
        where = Location(source, number)
        try:
            record = parse_strict(text)
        except ValueError as exc:  # JSONDecodeError and DuplicateKey are ValueErrors
            self._report(where, "not-json", f"not a JSON record ({exc})")
            return
        self.record(where, record)

    def record(self, where: Location, record: Mapping[str, Any]) -> None:
        sealed = head_of(record)
        if sealed is None:
            self._report(where, "unchained", "no valid seq/prev/hash fields: a record added by hand, "
                         "or written before the chain existed")
            return
        prev = str(record["prev"])
        if digest(record) != sealed.hash:
            self._report(where, "changed", f"content does not match its hash (record seq {sealed.seq} "
                         "was edited after it was written)")
        self.verified += 1
        head, at = self.head, self._head_at
        if head is None or at is None:
            self.first, self.first_prev = sealed, prev
            self._advance(sealed, where)
            return
        if prev == head.hash and sealed.seq == head.seq + 1:
            self._advance(sealed, where)
        elif sealed.seq == 1 and prev == GENESIS:
            self.restarts += 1
            if not self.allow_restarts:
                self._report(where, "restarted", f"a new chain starts here (seq 1) after seq {head.seq} at "
                             f"line {at.line}: the records after it may have been cut, or the gateway "
                             "started without its chain state (use --allow-restarts for stdout logs)")
            self._missing.clear()
            self._advance(sealed, where)
        elif sealed.seq <= head.seq:
            gap_at = self._missing.pop(sealed.seq, None)
            if gap_at is not None:
                index, size = gap_at
                gap = self.breaks[index]
                if size == 1:
                    self.breaks[index] = Break(gap.where, "reordered",
                                               f"record seq {sealed.seq} belongs before this line but "
                                               f"was found later, at {where}")
                self._report(where, "reordered", f"record seq {sealed.seq} is out of order: it belongs "
                             f"before {gap.where.source}:{gap.where.line}")
            else:
                self._report(where, "duplicated", f"record seq {sealed.seq} comes after seq {head.seq} "
                             f"(line {at.line}): a copy inserted here, or a record moved")
            # keep linking from the head: the next record should still follow it
        elif sealed.seq > head.seq + 1:
            missing = sealed.seq - head.seq - 1
            span = f"seq {head.seq + 1}" if missing == 1 else f"seq {head.seq + 1} to {sealed.seq - 1}"
            stored = len(self.breaks)
            self._report(where, "deleted", f"{missing} record(s) missing before this line ({span}); "
                         f"expected seq {head.seq + 1} with prev {_short(head.hash)}")
            if len(self.breaks) > stored and len(self._missing) + missing <= self.keep:
                for seq in range(head.seq + 1, sealed.seq):
                    self._missing[seq] = (stored, missing)
            self._advance(sealed, where)
        else:
            self._report(where, "inserted", f"prev {_short(prev)} is not the hash of the record before "
                         f"({at.source}:{at.line}, {_short(head.hash)}): a record was inserted or "
                         "replaced here, or the one before was re-hashed")
            self._advance(sealed, where)

    def _advance(self, head: Head, where: Location) -> None:
        self.head, self._head_at = head, where

    def ends_at(self, written: Head, state_source: str) -> None:
        """Compare the last record with what the writer says it wrote last (its state file)."""
        if self.head is None or self._head_at is None:
            if written.seq > 0:
                self._report(Location(state_source, 1), "truncated",
                             f"the gateway wrote up to seq {written.seq} but the files hold no records")
            return
        at = self._head_at
        if written.seq > self.head.seq:
            self._report(at, "truncated", f"the last record here is seq {self.head.seq} but the gateway "
                         f"wrote up to seq {written.seq} ({state_source}): {written.seq - self.head.seq} "
                         "record(s) cut from the end")
        elif written.seq == self.head.seq and written.hash != self.head.hash:
            self._report(at, "changed", f"the last record's hash is {_short(self.head.hash)} but the "
                         f"gateway wrote {_short(written.hash)} ({state_source}): it was re-written")

    @property
    def intact(self) -> bool:
        return self.problems == 0


def check_lines(lines: Iterable[tuple[str, int, str]], *, allow_restarts: bool = False) -> ChainCheck:
    """Check (source, line number, text) triples in order."""
    check = ChainCheck(allow_restarts=allow_restarts)
    for source, number, text in lines:
        check.line(source, number, text)
    return check


def parse_state(text: str) -> Head | None:
    """Read a state file line: ``mailgate audit chain v1 seq=N hash=HEX``."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    seq, hash_ = fields.get("seq", ""), fields.get("hash", "")
    if not text.startswith("mailgate audit chain v1 ") or not seq.isdigit() or not _is_hex(hash_):
        return None
    return Head(int(seq), hash_)


def format_state(head: Head) -> bytes:
    """A fixed-width state line, so it can be rewritten in place at offset 0."""
    return f"mailgate audit chain v1 seq={head.seq:020d} hash={head.hash}\n".encode("ascii")
