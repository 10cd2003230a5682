"""A spooled message's envelope (``envelope.json``): its values, and reading one back strictly. Pure.

Two formats are read. Format 2 (written since issue 13) is a journal: one JSON
object per line, each a whole envelope (``"version": 2``); the first is written
at commit, each state change appends another, and the last line that is a
whole JSON object is the envelope (a line cut short by a crash is skipped: it
was never acknowledged). Format 1 (before) is one indented JSON document,
rewritten in place; it is still read, and `Envelope.to_json` still writes it
(rollback: ``mailgate queue convert-back``).

The runner turns the envelope into SMTP commands (``MAIL FROM:<sender> SIZE=n
BODY=...``, ``RCPT TO:<address>``) and into folder names (its ``id``). A file
edited by hand, by a bug or by someone who could write the spool must not be
able to inject a parameter, a command or a path: `Envelope.from_json` accepts
exactly what mailgate writes — every field of the right type, addresses as
``RCPT`` accepts them (`gateway.smtp.address`, the same grammar), known values
for the fields that reach the wire — and raises `EnvelopeInvalid` listing every
problem otherwise. Nothing is repaired or guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from gateway.smtp.address import AddressError, parse_path

FORMAT_VERSION = 2  # the journal of whole-envelope lines
FORMAT_V1 = 1  # one indented document, rewritten (read, and written by `to_json` for rollback)
READ_VERSIONS = (FORMAT_V1, FORMAT_VERSION)


class RecipientStatus(StrEnum):
    """A spooled recipient's state, as the envelope stores it."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DELETED = "deleted"  # by the operator, while its delivery ran (never written back)


PENDING, DELIVERED, FAILED = (
    RecipientStatus.PENDING,
    RecipientStatus.DELIVERED,
    RecipientStatus.FAILED,
)
STATUSES = (PENDING, DELIVERED, FAILED)
BODY_TYPES = ("8BITMIME", "7BIT")  # MAIL's BODY= values the listener accepts
MAX_NAME = 255  # upstream and rule names: config keys, never this long in practice
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")  # what the listener negotiates (listener.min_tls_version)
MAX_CIPHER = 64  # OpenSSL's cipher names are under 40 characters ("TLS_AES_256_GCM_SHA384")
_HEX = frozenset("0123456789abcdef")
_CIPHER_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def valid_id(text: str) -> bool:
    """A queue id as `gateway.queue.spool.new_id` makes them (and nothing a path could use)."""
    return 8 <= len(text) <= 64 and _HEX.issuperset(text)


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
    app: str | None = None  # the app that authenticated at enqueue (absent in older spools)
    extra: dict[str, Any] = field(default_factory=dict)
    # The app's TLS at enqueue, for the queue's message.result (issue 14): null on a plain session,
    # and absent in envelopes written before (read as null). Never written in format 1.
    client_tls_version: str | None = None  # OpenSSL's name: "TLSv1.3"
    client_tls_cipher: str | None = None
    client_cert_sha256: str | None = None  # the app's verified client certificate, if it gave one
    # Seconds the message waited for a provider budget or a throttling pause since its age base
    # (issue 16): not counted toward queue.max_age. Absent in older envelopes (read as 0), never
    # written in format 1.
    paced_s: float = 0.0

    @property
    def age_base(self) -> float:
        """Where the age limit counts from: arrival (or `queue requeue`), plus the paced time."""
        return (self.requeued if self.requeued is not None else self.received) + self.paced_s

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    @property
    def last_reply(self) -> str | None:
        tried = [r for r in self.recipients if r.last_attempt is not None]
        return max(tried, key=lambda r: r.last_attempt or 0).last_reply if tried else None

    def to_json(self) -> bytes:
        """Format 1: the whole envelope as one indented document (what 0.x releases read).

        Without the listener's TLS facts: releases before issue 13 refuse fields they do not know.
        """
        data = {"version": FORMAT_V1, **asdict(self)}
        for name in FORMAT_2_ONLY:
            del data[name]
        return json.dumps(data, ensure_ascii=True, indent=1).encode("ascii") + b"\n"

    def to_record(self) -> bytes:
        """Format 2: the whole envelope as one compact JSON line (a journal record), ``\n``-ended."""
        data = {"version": FORMAT_VERSION, **self._fields()}
        return _ENCODE(data).encode("ascii") + b"\n"

    def _fields(self) -> dict[str, Any]:
        """`asdict` without its deep copy (the values are plain JSON types)."""
        data = {name: getattr(self, name) for name in _ENVELOPE_NAMES}
        data["recipients"] = [
            {name: getattr(r, name) for name in _RECIPIENT_NAMES} for r in self.recipients
        ]
        return data

    @classmethod
    def from_json(cls, raw: bytes, queue_id: str | None = None) -> Envelope:
        """The envelope in `raw` (format 1 or 2), checked field by field (and its id against `queue_id`)."""
        return _Reader(queue_id).envelope(_current(raw))


CLIENT_TLS_FIELDS = ("client_tls_version", "client_tls_cipher", "client_cert_sha256")
FORMAT_2_ONLY = (*CLIENT_TLS_FIELDS, "paced_s")  # fields the releases reading format 1 refuse
_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode
_ENVELOPE_NAMES = [f.name for f in fields(Envelope)]
_RECIPIENT_NAMES = [f.name for f in fields(RecipientState)]


def _current(raw: bytes) -> bytes:
    """The envelope a file holds: format 2's last whole line, or format 1's one document.

    A format 2 file's first line is a whole JSON object; a format 1 file's is ``{``.
    Lines that are not JSON are the tail of an append a crash cut short (each record
    is written after a newline, so it never joins such a tail) and are skipped.
    """
    first, _, rest = raw.partition(b"\n")
    if not rest.strip() or not first.strip().startswith(b"{") or first.strip() == b"{":
        return raw  # one document: format 1, or a format 2 file of one line (or not JSON)
    for line in reversed(raw.split(b"\n")):
        line = line.strip()
        if line.startswith(b"{") and line.endswith(b"}"):
            try:
                json.loads(line)
            except (ValueError, RecursionError):
                continue
            return line
    return raw


class EnvelopeInvalid(ValueError):
    """An envelope (or a message folder) mailgate did not write as it is; `problems` says why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --- reading back ------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}.get(
        type(value), "object" if isinstance(value, dict) else "null" if value is None else "?"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def _cipher(value: Any) -> bool:
    """An OpenSSL cipher name: letters, digits, ``_`` and ``-`` (``ECDHE-RSA-AES256-GCM-SHA384``)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_CIPHER
        and _CIPHER_CHARACTERS.issuperset(value)
    )


# field -> (check, what is expected); required fields are those without a dataclass default
_RECIPIENT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "upstream": (_name, "an upstream name"),
    "rule": (_optional(_name), "a rule name or null"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "attempts": (_count, "a whole number of at least 0"),
    "last_reply": (_optional(_text), "a string or null"),
    "last_attempt": (_optional(_number), "a Unix time or null"),
    "in_flight": (_flag, "true or false"),
    "bounced": (_flag, "true or false"),
    "expired": (_flag, "true or false"),
    "route": (
        lambda v: isinstance(v, list) and all(_name(n) for n in v),
        "a list of upstream names",
    ),
}
_ENVELOPE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "received": (_number, "a Unix time"),
    "mail_body": (
        lambda v: v is None or v in BODY_TYPES,
        f"null or one of {', '.join(BODY_TYPES)}",
    ),
    "size": (_count, "a size in octets (a whole number of at least 0)"),
    "sha256": (_optional(_hex64), "64 lowercase hex digits or null"),
    "message_id": (_optional(_text), "a string or null"),
    "session_id": (_optional(_text), "a string or null"),
    "client_ip": (_optional(_text), "a string or null"),
    "helo": (_optional(_text), "a string or null"),
    "attempts": (_count, "a whole number of at least 0"),
    "next_attempt": (_number, "a Unix time"),
    "requeued": (_optional(_number), "a Unix time or null"),
    "bounce_of": (
        lambda v: v is None or (isinstance(v, str) and valid_id(v)),
        "a queue id or null",
    ),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "app": (_optional(_name), "an app name or null"),
    "client_tls_version": (
        lambda v: v is None or v in TLS_VERSIONS,
        f"null or one of {', '.join(TLS_VERSIONS)}",
    ),
    "client_tls_cipher": (
        _optional(_cipher),
        f"an OpenSSL cipher name (at most {MAX_CIPHER} letters, digits, _ and -) or null",
    ),
    "client_cert_sha256": (_optional(_hex64), "64 lowercase hex digits or null"),
    "paced_s": (lambda v: _number(v) and v >= 0, "seconds (a number of at least 0)"),
}


def _required(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


class _Reader:
    """Collects every problem of one envelope before giving up, so one look says all."""

    def __init__(self, queue_id: str | None) -> None:
        self.queue_id = queue_id
        self.problems: list[str] = []

    def envelope(self, raw: bytes) -> Envelope:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise EnvelopeInvalid([f"envelope.json: not JSON ({str(exc)[:200]})"]) from None
        if not isinstance(data, dict):
            raise EnvelopeInvalid([f"envelope.json: found {_kind(data)}, expected an object"])
        version = data.pop("version", None)
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise EnvelopeInvalid(
                [
                    f"version: found {_shown(version)}, expected {FORMAT_V1} or "
                    f"{FORMAT_VERSION} (unknown format)"
                ]
            )
        self._keys("", data, Envelope)
        self._id(data)
        self._address("sender", data, "sender", sender=True)
        self._fields("", data, _ENVELOPE_FIELDS)
        self._client_tls(data)
        recipients = data.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            self._problem("recipients", recipients, "a list of at least one recipient")
            recipients = []
        states = [self._recipient(f"recipients[{n}]", r) for n, r in enumerate(recipients)]
        if self.problems:
            raise EnvelopeInvalid(self.problems)
        data["recipients"] = states
        return Envelope(**data)

    def _recipient(self, where: str, value: Any) -> RecipientState | None:
        if not isinstance(value, dict):
            self._problem(where, value, "an object")
            return None
        before = len(self.problems)
        self._keys(f"{where}.", value, RecipientState)
        self._address(f"{where}.address", value, "address", sender=False)
        self._fields(f"{where}.", value, _RECIPIENT_FIELDS)
        return RecipientState(**value) if len(self.problems) == before else None

    def _keys(self, prefix: str, data: Mapping[str, Any], cls: type) -> None:
        known = {f.name for f in fields(cls)}
        for name in sorted(_required(cls) - set(data)):
            self.problems.append(f"{prefix}{name}: missing")
        for name in sorted(set(data) - known):
            self.problems.append(
                f"{prefix.rstrip('.') or 'envelope'}: unknown field {_shown(name)}"
            )

    def _fields(
        self,
        prefix: str,
        data: Mapping[str, Any],
        checks: Mapping[str, tuple[Callable[[Any], bool], str]],
    ) -> None:
        for name, (check, expected) in checks.items():
            if name in data and not check(data[name]):
                self._problem(f"{prefix}{name}", data[name], expected)

    def _client_tls(self, data: Mapping[str, Any]) -> None:
        """The app's TLS facts come together: a version with its cipher, a certificate with both."""
        version, cipher = data.get("client_tls_version"), data.get("client_tls_cipher")
        if (version is None) != (cipher is None):
            self.problems.append(
                "client_tls_version, client_tls_cipher: found one without the other, "
                "expected both (a TLS session) or neither (a plain one)"
            )
        if data.get("client_cert_sha256") is not None and version is None:
            self.problems.append(
                "client_cert_sha256: found a client certificate on a plain session, "
                "expected client_tls_version and client_tls_cipher with it"
            )

    def _id(self, data: Mapping[str, Any]) -> None:
        if "id" not in data:
            return  # reported as missing
        value = data["id"]
        if not (isinstance(value, str) and valid_id(value)):
            self._problem("id", value, "a queue id (8 to 64 lowercase hex digits)")
        elif self.queue_id is not None and value != self.queue_id:
            self._problem("id", value, f"{self.queue_id}, the name of the message's folder")

    def _address(self, where: str, data: Mapping[str, Any], key: str, *, sender: bool) -> None:
        """As the listener takes MAIL and RCPT: the same grammar, and nothing around it."""
        if key not in data:
            return  # reported as missing
        value = data[key]
        expected = (
            "an address as MAIL FROM accepts it" if sender else "an address as RCPT accepts it"
        )
        if not isinstance(value, str):
            self._problem(where, value, expected)
            return
        try:
            parsed = parse_path(f"<{value}>", sender=sender)
        except AddressError as exc:
            self._problem(where, value, f"{expected} ({exc.reply.text})")
            return
        if parsed.text != value:
            self._problem(where, value, expected)

    def _problem(self, where: str, found: Any, expected: str) -> None:
        kind = "" if found is None or isinstance(found, str) else f" ({_kind(found)})"
        self.problems.append(f"{where}: found {_shown(found)}{kind}, expected {expected}")
