"""What an upstream's reply means: for the message, for the app, for the connection. Pure.

One place that reads upstream replies, used by the shared transaction (relay and queue):

- `Verdict`: the class of a reply at a step of the transaction (``accepted``, ``refused``,
  ``deferred``, ``closing``, ``connection-limit``);
- `KNOWN`: replies recognised by code, enhanced code and text — the place for a provider's
  throttling replies (a later table); it holds the per-connection message limits seen so far;
- `verdict`: the class of one reply (None: the connection went away before it came);
- `reflect`, `reusable`, `final`: what the app sees, whether a session may be handed on, and
  whether a failure to get a session ends the failover.

A per-connection limit is recognised by where it comes, not by its words: a 4xx, a 421 or the
connection's loss in answer to MAIL on a connection that already carried a message. (OpenSMTPD's
``452 4.5.3`` is also its "too many recipients"; Exim's ``421`` is any close.) On a connection
that carried nothing the same reply is an ordinary deferral.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.outbound.failure import UpstreamFailure
from gateway.smtp import replies
from gateway.smtp.replies import Reply


class Verdict(StrEnum):
    ACCEPTED = "accepted"  # 2xx (354 after DATA): the step went through
    REFUSED = "refused"  # 5xx: a permanent refusal of this message (or recipient)
    DEFERRED = "deferred"  # 4xx: not now; the session stays usable
    CLOSING = "closing"  # 421, or the connection went away: never reuse the session
    CONNECTION_LIMIT = "connection-limit"  # this connection is spent: a fresh one may take it


@dataclass(frozen=True)
class Known:
    """A reply recognised by its code, enhanced code (None: any) and text (a regex, case-blind)."""

    code: int
    enhanced: str | None
    text: str
    verdict: Verdict
    source: str  # who answers this way, for the reader (and the audit)
    steps: frozenset[str] = frozenset({"MAIL"})

    def matches(self, reply: Reply, step: str) -> bool:
        return (
            step in self.steps
            and reply.code == self.code
            and (self.enhanced is None or reply.enhanced == self.enhanced)
            and re.search(self.text, reply.text, re.IGNORECASE) is not None
        )


# Replies recognised by their words. A CONNECTION_LIMIT entry applies only on a connection that
# already carried a message (on a fresh one the reply is an ordinary deferral).
KNOWN: tuple[Known, ...] = (
    Known(452, "4.5.3", r"too many messages", Verdict.CONNECTION_LIMIT, "OpenSMTPD max-mails"),
    Known(
        421,
        None,
        r"too many messages in (this|one) connection",
        Verdict.CONNECTION_LIMIT,
        "Exim smtp_accept_max_per_connection, Amazon SES",
    ),
)


ALL_STEPS = frozenset({"SESSION", "MAIL", "RCPT", "DATA", "DOT"})
SENDER_STEPS = frozenset({"SESSION", "MAIL"})

# Throttling: the provider asks this sending identity to slow down (`gateway.policy.budgets`
# pauses it). Texts as the providers document them; a code alone where the issue of the reply
# is the code (RFC 3463 4.7.0 / 4.7.1 answered to a submission are its rate limits). Other
# ``554 5.2.0`` replies (SendAsDenied, ...) are permanent: only the quota text matches there.
THROTTLING: tuple[Known, ...] = (
    Known(
        432,
        "4.3.2",
        r"",
        Verdict.DEFERRED,
        "Microsoft 365: STOREDRV.ClientSubmit; sender thread limit exceeded / concurrent "
        "connection limit exceeded (3 connections per mailbox)",
        ALL_STEPS,
    ),
    Known(
        554,
        "5.2.0",
        r"SubmissionQuotaExceeded",
        Verdict.DEFERRED,
        "Microsoft 365: STOREDRV.Submission.Exception:SubmissionQuotaExceededException "
        "(10,000 recipients a day)",
        ALL_STEPS,
    ),
    Known(
        550,
        "5.4.5",
        r"(daily|peak) (user sending|smtp relay) (quota|limit)",
        Verdict.DEFERRED,
        "Google: Daily user sending limit exceeded / Daily SMTP relay limit exceeded for user",
        ALL_STEPS,
    ),
    Known(
        450,
        "4.2.1",
        r"peak smtp relay limit exceeded",
        Verdict.DEFERRED,
        "Google SMTP relay: Peak SMTP relay limit exceeded for this customer",
        ALL_STEPS,
    ),
    Known(
        421,
        "4.7.28",
        r"",
        Verdict.DEFERRED,
        "Gmail: unusual rate of unsolicited mail, temporarily rate limited",
        ALL_STEPS,
    ),
    Known(
        454,
        None,
        r"throttling failure",
        Verdict.DEFERRED,
        "Amazon SES: 454 Throttling failure: Maximum sending rate exceeded / Daily message "
        "quota exceeded",
        ALL_STEPS,
    ),
    Known(
        421,
        "4.4.2",
        r"submission rate for this client has exceeded",
        Verdict.DEFERRED,
        "Exchange: Message submission rate for this client has exceeded the configured limit",
        ALL_STEPS,
    ),
    # The bare codes only where they can be about the sender: at AUTH ("SESSION" is asked only
    # for a refusal at AUTH) and MAIL. At RCPT a 450 4.7.1 is one recipient's policy
    # (greylisting, a restriction): it must not pause every message of the identity.
    Known(421, "4.7.0", r"", Verdict.DEFERRED, "rate limit (RFC 3463 4.7.0)", SENDER_STEPS),
    Known(450, "4.7.1", r"", Verdict.DEFERRED, "rate limit (RFC 3463 4.7.1)", SENDER_STEPS),
    Known(451, "4.7.1", r"", Verdict.DEFERRED, "rate limit (RFC 3463 4.7.1)", SENDER_STEPS),
)


def throttling(reply: Reply | None, step: str) -> Known | None:
    """The `THROTTLING` entry `reply` (at `step`, or "SESSION" while opening one) matches."""
    if reply is None:
        return None
    return next((k for k in THROTTLING if k.matches(reply, step)), None)


@dataclass(frozen=True)
class Hint:
    """A provider's authentication or authorisation refusal, and what the operator should do."""

    code: int
    enhanced: str
    text: str  # a regex, case-blind ("" matches any text)
    hint: str


# Known provider refusals of who we are (at AUTH, MAIL or after the data): the audit and
# `mailgate oauth test` add the hint to the provider's words.
AUTH_HINTS: tuple[Hint, ...] = (
    Hint(
        535,
        "5.7.139",
        r"",
        "Microsoft 365: SMTP AUTH is disabled for the mailbox or the tenant (Set-CASMailbox "
        "-SmtpClientAuthenticationDisabled $false, or the tenant's SMTP AUTH setting), or "
        "security defaults block it",
    ),
    Hint(
        535,
        "5.7.3",
        r"",
        "Microsoft 365: authentication unsuccessful: SMTP AUTH disabled for the mailbox or "
        "tenant, or the app lacks SMTP.SendAsApp / the mailbox permission",
    ),
    Hint(
        550,
        "5.7.30",
        r"",
        'Microsoft 365: basic authentication is not supported: use auth = "xoauth2"',
    ),
    Hint(
        554,
        "5.2.252",
        r"",
        "Microsoft 365: SendAsDenied: the authenticated mailbox may not send as this sender "
        "(grant Send As, or send from the mailbox itself)",
    ),
    Hint(
        534,
        "5.7.9",
        r"",
        'Google: an app password or OAuth is needed (use auth = "xoauth2" with provider = "gmail")',
    ),
)


def auth_hint(reply: Reply | None) -> str | None:
    """The operator's hint for a known provider refusal of who we are, if `reply` is one."""
    if reply is None:
        return None
    for hint in AUTH_HINTS:
        if (
            reply.code == hint.code
            and reply.enhanced == hint.enhanced
            and re.search(hint.text, reply.text, re.IGNORECASE) is not None
        ):
            return hint.hint
    return None


def known(reply: Reply, step: str) -> Known | None:
    """The `KNOWN` entry `reply` matches at `step`, if any."""
    return next((k for k in KNOWN if k.matches(reply, step)), None)


def verdict(reply: Reply | None, step: str, *, reused: bool = False) -> Verdict:
    """The class of `reply` to `step` ("MAIL", "RCPT", "DATA", "DOT"); None: the connection went.

    `reused`: the connection already carried a message before this transaction.
    """
    if step == "MAIL" and reused and (reply is None or reply.is_transient):
        return Verdict.CONNECTION_LIMIT
    if reply is None or reply.code == 421:
        return Verdict.CLOSING
    entry = known(reply, step)
    if entry is not None and entry.verdict is not Verdict.CONNECTION_LIMIT:
        return entry.verdict
    if reply.is_positive or (step == "DATA" and reply.code == 354):
        return Verdict.ACCEPTED
    if reply.is_permanent:
        return Verdict.REFUSED
    return Verdict.DEFERRED


def reflect(reply: Reply) -> Reply:
    """The upstream's reply as the app should see it.

    Codes and enhanced codes are kept; a reply without an enhanced code gets the
    generic one of its class (the app was promised ENHANCEDSTATUSCODES; the audit
    keeps the upstream's reply as it was). A 421 (the *upstream* closing) becomes
    451, since the app's own connection stays open; nonsense becomes 451.
    """
    if reply.code == 421:
        return Reply(451, reply.enhanced or replies.default_enhanced(451), reply.text)
    if not 200 <= reply.code < 600:
        return replies.UPSTREAM_PROTOCOL
    return reply.with_default_enhanced()


def reusable(answer: Reply, reply: Reply) -> bool:
    """May a session go back to its pool after `answer` (`reply` is what `expected` made of it)?

    Only after a real reply (not one `expected` replaced) that does not announce the close (421).
    """
    return reply is answer and answer.code != 421


def final(failure: UpstreamFailure) -> bool:
    """A failure to get a session that no other upstream of the route would change."""
    upstream = failure.upstream_reply
    return upstream is not None and upstream.is_permanent and failure.reply.is_permanent
