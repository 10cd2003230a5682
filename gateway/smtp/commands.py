"""SMTP command lines: verb, argument, and the MAIL/RCPT parameters (RFC 5321 4.1).

Pure: the listener hands a decoded line here and gets values or a `Reply` back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.smtp import replies
from gateway.smtp.address import Address, AddressError, parse_path
from gateway.smtp.replies import Reply

# RFC 5321 4.5.3.1.4 allows 512 octets; RFC 1870 (SIZE) and RFC 6152 (BODY) let
# MAIL grow by their parameters, so the limit is raised by what we advertise.
COMMAND_LINE_LIMIT = 512 + 26 + 14


@dataclass(frozen=True)
class Command:
    verb: str
    argument: str


@dataclass(frozen=True)
class MailFrom:
    sender: Address
    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"


@dataclass(frozen=True)
class RcptTo:
    recipient: Address
    params: dict[str, str] = field(default_factory=dict)


class CommandError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def parse_command(line: bytes) -> Command:
    """Split a command line (without CRLF) into an upper-case verb and its argument."""
    if b"\0" in line or b"\r" in line or b"\n" in line:
        raise CommandError(replies.NUL_IN_COMMAND)
    text = line.decode("utf-8", "replace")
    verb, _, argument = text.partition(" ")
    # Only an ASCII verb is upper-cased: "maıl".upper() is "MAIL", and no lookalike may become a verb.
    return Command(verb.upper() if verb.isascii() else verb, argument.strip(" "))


def _split_path(argument: str, keyword: str) -> tuple[str, list[str]]:
    """Split ``FROM:<path> params`` into the path and its parameter words."""
    head, colon, rest = argument.partition(":")
    if not colon or head.strip(" ").upper() != keyword:
        raise CommandError(replies.SYNTAX_ARGS)
    rest = rest.lstrip(" ")  # tolerated: "MAIL FROM: <a@b>", as most servers do
    if not rest.startswith("<"):
        raise CommandError(replies.SYNTAX_ARGS.with_text("Address must be in angle brackets"))
    end = _path_end(rest)
    if end < 0:
        raise CommandError(replies.SYNTAX_ARGS.with_text("Unterminated address"))
    path, params = rest[: end + 1], rest[end + 1 :]
    if params and not params.startswith(" "):
        raise CommandError(replies.SYNTAX_ARGS)
    return path, [word for word in params.split(" ") if word]  # SP only, not any Unicode blank


def _path_end(text: str) -> int:
    """Index of the '>' closing the path, honouring quoted local parts."""
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return i
    return -1


def _params(words: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        if not key.isascii() or not key.replace("-", "").isalnum():
            raise CommandError(replies.SYNTAX_ARGS)
        if key.upper() in params:
            raise CommandError(
                replies.SYNTAX_ARGS.with_text(f"Parameter {key.upper()} given twice")
            )
        params[key.upper()] = value
    return params


def _address_and_params(argument: str, keyword: str) -> tuple[Address, dict[str, str]]:
    """``FROM:<path> params`` / ``TO:<path> params`` to the address and its parameters."""
    path, words = _split_path(argument, keyword)
    try:
        address = parse_path(path, sender=keyword == "FROM")
    except AddressError as exc:
        raise CommandError(exc.reply) from None
    return address, _params(words)


def parse_mail(argument: str) -> MailFrom:
    sender, params = _address_and_params(argument, "FROM")
    size = body = None
    for key, value in params.items():
        if key == "SIZE":
            if not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise CommandError(replies.SYNTAX_ARGS.with_text("Bad SIZE parameter"))
            size = int(value)
        elif key == "BODY":
            if value.upper() not in ("7BIT", "8BITMIME"):
                raise CommandError(replies.SYNTAX_ARGS.with_text("Bad BODY parameter"))
            body = value.upper()
        else:
            raise CommandError(replies.PARAM_UNKNOWN)
    return MailFrom(sender, size, body)


def parse_rcpt(argument: str) -> RcptTo:
    recipient, params = _address_and_params(argument, "TO")
    if params:
        raise CommandError(replies.PARAM_UNKNOWN)
    return RcptTo(recipient)
