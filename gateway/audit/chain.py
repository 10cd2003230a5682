"""The audit hash chain: seal each record to the one before it, and check the links.

Every record line ends with three fields, in this order:

- ``seq``: 1, 2, 3, ... counted across restarts, reopens and rotation;
- ``prev``: the ``hash`` of the record before (64 zeros for the first record of a chain);
- ``hash``: hex SHA-256 of the line's bytes up to, not including, ``,"hash":"``.

So a line is ``{...,"seq":N,"prev":"<64 hex>","hash":"<64 hex>"}`` and checking one
needs no JSON parser: split at the last ``,"hash":"``, hash the left part, compare.
Every byte before the hash is covered, ``prev`` included, so a record deleted,
changed, inserted or moved breaks a hash or a link. `ChainCheck` reads lines in
order and reports each break with its file, line and what was expected. Pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

GENESIS = "0" * 64
FIELDS = ("seq", "prev", "hash")
HASH_MARK = ',"hash":"'
_SEALED = re.compile(r',"seq":([0-9]{1,20}),"prev":"([0-9a-f]{64})"(,"hash":")([0-9a-f]{64})"\}\Z')
_TAIL = 200  # the chain fields take at most 164 characters at the end of a line


def _plain(value: object) -> str:
    return str(value)


def render(record: Mapping[str, Any]) -> str:
    """One JSON line in the record's own key order (people read it) with no control characters."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_plain)


def digest(body: str) -> str:
    """The hash of a line whose part before ``,"hash":"`` is `body`."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class Head(NamedTuple):
    """The end of a chain: what the next record links to (a tuple: cheap in the verify loop)."""

    seq: int
    hash: str


START = Head(0, GENESIS)


def seal(record: dict[str, Any], head: Head) -> tuple[str, Head]:
    """Add ``seq``, ``prev`` and ``hash`` to `record` after `head`; return its line and the new head."""
    for name in FIELDS:
        record.pop(name, None)
    record["seq"] = head.seq + 1
    record["prev"] = head.hash
    body = render(record)[:-1]
    record["hash"] = digest(body)
    return f'{body}{HASH_MARK}{record["hash"]}"}}', Head(record["seq"], record["hash"])


class Sealed(NamedTuple):
    """What a line says about its place in the chain, and whether its bytes match its hash."""

    seq: int
    prev: str
    hash: str
    intact: bool


def unseal(line: str) -> Sealed | None:
    """Read seq, prev and hash from the end of a line (None: it does not end like a sealed record)."""
    found = _SEALED.search(line, max(0, len(line) - _TAIL))
    if found is None:
        return None
    hash_ = found.group(4)
    return Sealed(
        int(found.group(1)), found.group(2), hash_, digest(line[: found.start(3)]) == hash_
    )


def head_of(record: Mapping[str, Any]) -> Head | None:
    """The head a parsed record leaves, or None when it carries no well-formed chain fields."""
    seq, prev, hash_ = record.get("seq"), record.get("prev"), record.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return None
    if not (_is_hex(prev) and _is_hex(hash_)):
        return None
    return Head(seq, str(hash_))


def _is_hex(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# --- checking ---------------------------------------------------------------------------


class Location(NamedTuple):
    source: str
    line: int  # 0: the whole source (a state file, a --head value), not one of its lines

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class Break:
    """One place where the chain does not hold. `kind` is stable; `text` is for people."""

    where: Location
    # not-json, unchained, changed, deleted, reordered, duplicated, inserted, restarted,
    # truncated, unreached (an anchor the files do not hold), no-state (no anchor for the end)
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


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
    _missing: dict[int, tuple[int, int]] = field(
        default_factory=dict
    )  # seq -> (break index, gap size)
    _watched: dict[int, list[tuple[str, Location]]] = field(
        default_factory=dict
    )  # seq -> (hash, where) of each record with that seq on the chain

    def _report(self, where: Location, kind: str, text: str) -> None:
        self.problems += 1
        if len(self.breaks) < self.keep:
            self.breaks.append(Break(where, kind, text))

    def line(self, source: str, number: int, text: str) -> None:
        where = Location(source, number)
        sealed = unseal(text)
        if sealed is None:
            try:
                json.loads(text)
            except ValueError as exc:
                self._report(where, "not-json", f"not a JSON record ({exc})")
            else:
                self._report(
                    where,
                    "unchained",
                    "no valid seq/prev/hash at the end of the line: a record "
                    "added by hand, or written before the chain existed",
                )
            return
        if not sealed.intact:
            self._report(
                where,
                "changed",
                f"content does not match its hash (record seq {sealed.seq} "
                "was edited after it was written)",
            )
        self.link(where, sealed)

    def link(self, where: Location, sealed: Sealed) -> None:
        """Check that `sealed` follows the record before it."""
        self.verified += 1
        prev = sealed.prev
        head, at = self.head, self._head_at
        if head is None or at is None:
            self.first, self.first_prev = Head(sealed.seq, sealed.hash), prev
            self._advance(sealed, where)
            return
        if prev == head.hash and sealed.seq == head.seq + 1:
            self._advance(sealed, where)
        elif sealed.seq == 1 and prev == GENESIS:
            self.restarts += 1
            if not self.allow_restarts:
                self._report(
                    where,
                    "restarted",
                    f"a new chain starts here (seq 1) after seq {head.seq} at "
                    f"line {at.line}: the records after it may have been cut, or the gateway "
                    "started without its chain state (use --allow-restarts for stdout logs)",
                )
            self._missing.clear()
            self._advance(sealed, where)
        elif sealed.seq <= head.seq:
            gap_at = self._missing.pop(sealed.seq, None)
            if gap_at is not None:
                index, size = gap_at
                gap = self.breaks[index]
                if size == 1:
                    self.breaks[index] = Break(
                        gap.where,
                        "reordered",
                        f"record seq {sealed.seq} belongs before this line but "
                        f"was found later, at {where}",
                    )
                self._report(
                    where,
                    "reordered",
                    f"record seq {sealed.seq} is out of order: it belongs "
                    f"before {gap.where.source}:{gap.where.line}",
                )
            else:
                self._report(
                    where,
                    "duplicated",
                    f"record seq {sealed.seq} comes after seq {head.seq} "
                    f"(line {at.line}): a copy inserted here, or a record moved",
                )
            # keep linking from the head: the next record should still follow it
        elif sealed.seq > head.seq + 1:
            missing = sealed.seq - head.seq - 1
            span = (
                f"seq {head.seq + 1}" if missing == 1 else f"seq {head.seq + 1} to {sealed.seq - 1}"
            )
            stored = len(self.breaks)
            self._report(
                where,
                "deleted",
                f"{missing} record(s) missing before this line ({span}); "
                f"expected seq {head.seq + 1} with prev {_short(head.hash)}",
            )
            if len(self.breaks) > stored and len(self._missing) + missing <= self.keep:
                for seq in range(head.seq + 1, sealed.seq):
                    self._missing[seq] = (stored, missing)
            self._advance(sealed, where)
        else:
            self._report(
                where,
                "inserted",
                f"prev {_short(prev)} is not the hash of the record before "
                f"({at.source}:{at.line}, {_short(head.hash)}): a record was inserted or "
                "replaced here, or the one before was re-hashed",
            )
            self._advance(sealed, where)

    def _advance(self, sealed: Sealed, where: Location) -> None:
        self.head, self._head_at = Head(sealed[0], sealed[2]), where
        if self._watched:
            seen = self._watched.get(sealed[0])
            if seen is not None and len(seen) < self.keep:
                seen.append((sealed[2], where))

    def watch(self, anchor: Head) -> None:
        """Before the lines: note the record at ``anchor.seq`` as the chain passes it (`reaches`)."""
        self._watched.setdefault(anchor.seq, [])

    def reaches(self, anchor: Head, label: str) -> None:
        """After the lines: the chain must hold `anchor` (watched), unchanged; later records may follow.

        `label` says where the anchor came from (``--head``), for the report.
        """
        if self.head is None or self._head_at is None or self.first is None:
            return  # no records at all: the caller says so
        seen = self._watched.get(anchor.seq, [])
        if any(hash_ == anchor.hash for hash_, _ in seen):
            return
        if seen:
            hash_, where = seen[0]
            self._report(
                where,
                "changed",
                f"record seq {anchor.seq} has hash {_short(hash_)} but {label} says "
                f"{_short(anchor.hash)}: the chain was rewritten at or before this record",
            )
        elif anchor.seq > self.head.seq:
            self._report(
                self._head_at,
                "truncated",
                f"the last record here is seq {self.head.seq} but {label} names seq "
                f"{anchor.seq}: {anchor.seq - self.head.seq} record(s) cut from the end "
                "(or files not given)",
            )
        elif anchor.seq < self.first.seq:
            self._report(
                Location(label, 0),
                "unreached",
                f"names seq {anchor.seq}, before the first record here (seq {self.first.seq}): "
                "give the older files that hold it",
            )
        else:
            self._report(
                Location(label, 0),
                "unreached",
                f"names seq {anchor.seq}, which is not in the files (deleted)",
            )

    def unanchored(self, source: str, text: str) -> None:
        """The end of the chain cannot be checked (no usable chain state): a problem, said once."""
        self._report(Location(source, 0), "no-state", text)

    def ends_at(self, written: Head, state_source: str) -> None:
        """Compare the last record with what the writer says it wrote last (its state file)."""
        if self.head is None or self._head_at is None:
            if written.seq > 0:
                self._report(
                    Location(state_source, 1),
                    "truncated",
                    f"the gateway wrote up to seq {written.seq} but the files hold no records",
                )
            return
        at = self._head_at
        if written.seq > self.head.seq:
            self._report(
                at,
                "truncated",
                f"the last record here is seq {self.head.seq} but the gateway "
                f"wrote up to seq {written.seq} ({state_source}): {written.seq - self.head.seq} "
                "record(s) cut from the end",
            )
        elif written.seq == self.head.seq and written.hash != self.head.hash:
            self._report(
                at,
                "changed",
                f"the last record's hash is {_short(self.head.hash)} but the "
                f"gateway wrote {_short(written.hash)} ({state_source}): it was re-written",
            )
        elif written.seq < self.head.seq and written.seq in self._watched:
            # The writer went on while we read (the state is read first): its record must be here.
            seen = self._watched[written.seq]
            if seen and all(hash_ != written.hash for hash_, _ in seen):
                self._report(
                    seen[0][1],
                    "changed",
                    f"record seq {written.seq} has hash {_short(seen[0][0])} but the gateway "
                    f"wrote {_short(written.hash)} ({state_source}): the chain was rewritten",
                )

    @property
    def intact(self) -> bool:
        return self.problems == 0


def check_lines(
    lines: Iterable[tuple[str, int, str]], *, allow_restarts: bool = False
) -> ChainCheck:
    """Check (source, line number, text) triples in order."""
    check = ChainCheck(allow_restarts=allow_restarts)
    for source, number, text in lines:
        check.line(source, number, text)
    return check


_STATE = re.compile(r"mailgate audit chain v1 seq=([0-9]{1,20}) hash=([0-9a-f]{64})\n?\Z")
_HEAD = re.compile(r"([0-9]{1,20}):([0-9a-f]{64})\Z")


def parse_state(text: str) -> Head | None:
    """Read a state file: exactly one line ``mailgate audit chain v1 seq=N hash=HEX``, or None."""
    found = _STATE.match(text)
    return Head(int(found.group(1)), found.group(2)) if found else None


def format_state(head: Head) -> bytes:
    """A fixed-width state line, so it can be rewritten in place at offset 0."""
    return f"mailgate audit chain v1 seq={head.seq:020d} hash={head.hash}\n".encode("ascii")


def format_head(head: Head) -> str:
    """The head as `mailgate audit head` prints it for an operator to keep: ``SEQ:HASH``."""
    return f"{head.seq}:{head.hash}"


def parse_head(text: str) -> Head | None:
    """``SEQ:HASH`` (as `format_head` writes it) or a state line; None if it is neither."""
    text = text.strip()
    found = _HEAD.match(text)
    head = Head(int(found.group(1)), found.group(2)) if found else parse_state(text)
    return head if head is not None and head.seq >= 1 else None
