"""SMTP replies as values (RFC 5321 section 4.2, enhanced codes per RFC 3463).

Every reply mailgate sends is a `Reply`; the fixed ones are defined once here.
This module is pure: no reactor, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 5321 textstring: HT and printable ASCII


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a three-digit code, an RFC 3463 enhanced code and text lines.

    `enhanced` is empty (or None) when the reply has none: 354, the greeting, a
    parsed reply whose server sent none (never a made-up ``X.0.0``).
    """

    code: int
    enhanced: str | None
    text: str

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> list[str]:
        """The text split into reply lines (a reply may span several)."""
        return self.text.split("\n") if self.text else [""]

    def to_bytes(self) -> bytes:
        """Wire form, with the enhanced code on every line (RFC 2034 section 4)."""
        lines = self.lines()
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            line = _CONTROL.sub(
                "?", line
            )  # e.g. a bare CR in an upstream's text, relayed to the app
            body = f"{self.enhanced} {line}" if self.enhanced else line
            out.append(f"{self.code}{sep}{body}".rstrip(" ") + "\r\n")
        return "".join(out).encode("ascii", "replace")

    def __str__(self) -> str:
        return f"{self.codes} {' / '.join(self.lines())}".replace("  ", " ")

    @property
    def codes(self) -> str:
        """The code and, if there is one, the enhanced code: ``550 5.7.1``, ``334``."""
        return f"{self.code} {self.enhanced}" if self.enhanced else str(self.code)

    def with_default_enhanced(self) -> Reply:
        """This reply, given the generic enhanced code of its class if it has none (2xx/4xx/5xx)."""
        if self.enhanced or self.code // 100 not in (2, 4, 5):
            return self
        return Reply(self.code, default_enhanced(self.code), self.text)

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


def expected(reply: Reply, *codes: int) -> Reply:
    """`reply` if its code is one of `codes` or a refusal (4xx/5xx); otherwise a protocol error.

    An upstream that answers MAIL with 251, DATA with 250 or RCPT with 354 has not done what
    the gateway asked: passing such a positive reply on would tell the app "accepted" for a
    message nobody took.
    """
    if reply.code in codes or 400 <= reply.code < 600:
        return reply
    return UPSTREAM_PROTOCOL.with_text(
        f"Upstream protocol error (unexpected {reply.code}), try again later"
    )


def counts_as_error(reply: Reply, verb: bytes) -> bool:
    """Whether `reply` to a command `verb` counts toward ``listener.max_errors``.

    Every 5xx does, and a 4xx refusing a recipient (RCPT), except ``452 4.5.3``: RFC 5321
    4.5.3.1.10's "send the other recipients in another transaction", which a compliant client
    acts on (those are bounded by ``listener.max_rcpt_commands`` instead). A 421 closes anyway.
    """
    if reply.code >= 500:
        return True
    return (
        verb == b"RCPT"
        and 400 <= reply.code < 500
        and reply.code != 421
        and reply.enhanced != "4.5.3"
    )


def default_enhanced(code: int) -> str:
    """The generic enhanced code for a reply class (X.0.0)."""
    return f"{code // 100}.0.0"


class ReplyParser:
    """Incremental parser of server replies, possibly multi-line (RFC 5321 section 4.2.1).

    Feed it bytes; it returns complete replies. Lines longer than `max_line`
    or malformed reply lines raise `MalformedReply`. A reply's `enhanced` is the
    code the server sent (RFC 3463: class 2, 4 or 5, the reply's own), or None
    when it sent none: what the audit records is what the server said.
    """

    def __init__(self, max_line: int = 4096, max_lines: int = 200) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []
        self._received = b""  # the wire lines of an incomplete multi-line reply
        self._code: int | None = None
        self._max_line = max_line
        self._max_lines = max_lines

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete reply."""
        return self._received + self._buffer

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                # A CR whose LF has not arrived yet is not part of the line.
                if len(self._buffer) - self._buffer.endswith(b"\r") > self._max_line:
                    raise MalformedReply("reply line too long")
                return replies
            line = self._buffer[:end].rstrip(b"\r")
            if len(line) > self._max_line:
                raise MalformedReply("reply line too long")
            self._received += self._buffer[: end + 1]
            self._buffer = self._buffer[end + 1 :]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        if (
            len(line) < 3
            or not line[:3].isdigit()
            or line[0] not in b"2345"
            or (len(line) > 3 and line[3:4] not in b" -")
        ):
            raise MalformedReply("malformed reply line")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise MalformedReply("reply code changed inside a multi-line reply")
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > self._max_lines:
            raise MalformedReply("too many reply lines")
        if line[3:4] == b"-":
            return None
        lines, self._lines, self._code = self._lines, [], None
        self._received = b""
        return _assemble(code, lines)


def _assemble(code: int, lines: list[bytes]) -> Reply:
    enhanced = ""
    texts = []
    for raw in lines:
        match = _ENHANCED.match(raw)
        if match and int(match.group(1)) == code // 100:
            enhanced = enhanced or match.group(0).strip().decode("ascii")
            raw = raw[match.end() :]
        texts.append(raw.decode("utf-8", "replace"))
    return Reply(code, enhanced or None, "\n".join(texts))


class MalformedReply(Exception):
    """The upstream sent something that is not an SMTP reply."""


# Replies of the listener, defined once. Grouped by where they are sent.
GREETING_DENIED = Reply(554, "5.7.1", "Client address not allowed to use this gateway")
DENIED_COMMAND = Reply(503, "5.7.1", "Client address not allowed; only QUIT is accepted")
PROXY_HEADER_INVALID = Reply(
    421, "4.7.0", "PROXY protocol header missing or invalid, closing connection"
)
PROXY_UNTRUSTED = Reply(
    421, "4.7.0", "PROXY protocol header not accepted from your address, closing connection"
)
CLOSING = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY; send mail and it will be tried")
HELP = Reply(214, "2.0.0", "mailgate: see https://www.rfc-editor.org/rfc/rfc5321")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")

SYNTAX_UNKNOWN = Reply(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (RFC 5321 section 4.5.3.1)")
SYNTAX_ARGS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given; RSET first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_MAIL_BEFORE_DATA = Reply(503, "5.5.1", "Need MAIL before DATA")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
PARAM_UNKNOWN = Reply(555, "5.5.4", "Unsupported MAIL or RCPT parameter")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
SOURCE_ROUTE = Reply(501, "5.1.3", "Source routes are not accepted")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8, which is not offered")
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL or bare CR/LF in command line")

NO_RULE = Reply(550, "5.7.1", "Relay access denied: no rule matches this recipient")
RULE_REJECT = Reply(550, "5.7.1", "Relay access denied by rule")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_RCPT_COMMANDS = Reply(
    421, "4.7.0", "Too many RCPT commands in one transaction, closing connection"
)
OTHER_ROUTE = Reply(
    452, "4.5.3", "Recipient routes through another upstream; send it in a separate transaction"
)
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds the fixed limit")
BARE_LINE_ENDING = Reply(
    550, "5.5.2", "Bare CR or LF (or NUL) in message data; only CRLF is allowed"
)
DATA_LINE_TOO_LONG = Reply(
    550, "5.5.2", "Message line longer than 1000 octets (RFC 5321 4.5.3.1.6)"
)
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Gateway shutting down, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")

UPSTREAM_UNREACHABLE = Reply(451, "4.4.1", "Upstream unreachable, try again later")
UPSTREAM_TIMEOUT = Reply(451, "4.4.2", "Upstream timed out, try again later")
UPSTREAM_LOST = Reply(451, "4.4.2", "Upstream connection lost, try again later")
UPSTREAM_NO_STARTTLS = Reply(451, "4.7.10", "Upstream did not offer STARTTLS; not sending in clear")
UPSTREAM_STARTTLS_REFUSED = Reply(451, "4.7.10", "Upstream refused STARTTLS; not sending in clear")
UPSTREAM_TLS_FAILED = Reply(451, "4.7.5", "Upstream TLS verification failed")
# The handshake failed before any certificate was refused (version, cipher, the server's alert).
UPSTREAM_TLS_HANDSHAKE_FAILED = Reply(451, "4.7.5", "Upstream TLS handshake failed")
UPSTREAM_AUTH_FAILED = Reply(451, "4.7.0", "Upstream authentication failed")
UPSTREAM_TOKEN_FAILED = Reply(451, "4.7.0", "Upstream OAuth token unavailable, try again later")
UPSTREAM_NULL_SENDER_OAUTH = Reply(
    550, "5.7.1", "The null sender <> cannot authenticate upstream as the sender"
)
OTHER_HEADER_EDITS = Reply(
    452,
    "4.5.3",
    "Recipient needs other header edits (rewrite_from/strip_headers); send it separately",
)
UPSTREAM_PROTOCOL = Reply(451, "4.5.0", "Upstream protocol error, try again later")
UPSTREAM_NO_8BIT = Reply(554, "5.6.3", "Upstream does not accept 8-bit data (8BITMIME)")
UPSTREAM_NO_SMTPUTF8 = Reply(
    553, "5.6.7", "Upstream does not offer SMTPUTF8 for a non-ASCII address"
)
BAD_SPOOLED_ADDRESS = Reply(550, "5.1.3", "Address in the spool contains control characters")

# Store-and-forward (delivery = "queue"); see gateway/queue/enqueue.py.
QUEUE_RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK, will be queued")
QUEUED = Reply(250, "2.0.0", "Queued")
QUEUE_WRITE_FAILED = Reply(
    452, "4.3.1", "Insufficient system storage: message not queued, try again later"
)
QUEUE_NOT_RUNNING = Reply(
    451, "4.3.5", "Queue delivery is not running; the gateway needs a restart"
)
# RFC 3463 X.3.2 "System not accepting network messages": mailgate queue drain.
QUEUE_DRAINING = Reply(
    451, "4.3.2", "This gateway is draining and not accepting queued mail; try again later"
)
OTHER_DELIVERY = Reply(
    452,
    "4.5.3",
    "Recipient uses the other delivery mode (queue or relay); send it in a separate transaction",
)

# App AUTH on the listener (RFC 4954) and sender ownership.
AUTH_EMPTY_CHALLENGE = Reply(334, "", "")  # AUTH PLAIN without an initial response: send it now
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_UNDECODABLE = Reply(501, "5.5.2", "Cannot decode the response")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type; use PLAIN or LOGIN")
AUTH_TWICE = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_NOT_OFFERED = NOT_IMPLEMENTED.with_text("AUTH is not offered: no [apps] are configured")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed authentications, try again later")
AUTH_AGAIN = Reply(
    530, "5.7.0", "Authentication required again: the app's settings changed on reload"
)
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated app")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header not allowed for the authenticated app")
FROM_NOT_SINGLE = Reply(550, "5.6.0", "Message must have exactly one From: header field")
HEADERS_MALFORMED = Reply(550, "5.6.0", "Message header section not well formed (RFC 5322)")
HEADER_SECTION_TOO_BIG = Reply(552, "5.3.4", "Message header section too big to check")
MAIL_LOOP = Reply(554, "5.4.6", "Routing loop detected: too many Received header fields")

# TLS on the listener: STARTTLS (RFC 3207) on starttls:// entries, smtps:// (RFC 8314).
STARTTLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
STARTTLS_TWICE = Reply(503, "5.5.1", "TLS already active")
STARTTLS_NO_ARGUMENT = Reply(501, "5.5.4", "STARTTLS takes no parameters")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_NEEDS_TLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first: AUTH only over TLS")

# Connection limits and the listener's own closes.
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_CLIENT = Reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
HTTP_ON_SMTP = Reply(421, "4.7.0", "This is an SMTP server, not HTTP")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Data rate too low, closing connection")

# Policy limits.
RATE_LIMITED = Reply(450, "4.7.1", "Rate limit exceeded, try again later")
# [cluster] on_unavailable = "defer": the shared rate limit cannot be asked (relay mode).
CLUSTER_UNAVAILABLE = Reply(451, "4.3.0", "Shared rate limit unavailable, try again later")

# Provider budgets (gateway.policy.budgets): the text names the budget, e.g. "Upstream m365
# budget pace 30/minute spent for this sender, try again later" (`budget_reply`). Never 5xx.
BUDGET_SPENT = Reply(451, "4.7.1", "Upstream sending budget spent for this sender, try again later")
UPSTREAM_THROTTLING = Reply(
    451, "4.7.1", "Upstream is throttling this sender; paused, try again later"
)
# Queue mode: the sender's paced backlog already reaches past queue.max_age.
PACED_BACKLOG_FULL = Reply(
    452, "4.3.1", "Sending budget backlog for this sender is longer than the queue keeps mail"
)

# The upstream connection pool.
POOL_BUSY = Reply(451, "4.4.5", "All connections to the upstream are busy, try again later")

# Gateway errors and upstream session setup.
INTERNAL_ERROR = Reply(421, "4.3.0", "Internal error, closing connection")
DELIVERY_INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error during delivery; will retry")
UPSTREAM_STEP_REFUSED = Reply(451, "4.4.0", "Upstream refused the session, try again later")

# Queue mode: the spool's file system is below queue.min_free (gateway/queue/space.py); delivery
# goes on, new queued mail waits at the app (RFC 3463 X.3.1, mail system full).
QUEUE_BELOW_MIN_FREE = Reply(
    452, "4.3.1", "Insufficient system storage: the queue is low on disk space, try again later"
)
