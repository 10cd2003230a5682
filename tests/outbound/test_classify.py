"""gateway.outbound.classify: what an upstream's reply means, at which step, on which connection."""

from __future__ import annotations

from gateway.outbound.classify import KNOWN, Verdict, known, verdict
from gateway.smtp.replies import Reply

OPENSMTPD = Reply(452, "4.5.3", "Too many recipients: Too many messages sent")
EXIM = Reply(421, "", "too many messages in this connection")


def test_a_4xx_at_mail_on_a_reused_connection_is_its_per_connection_limit():
    """Any 4xx, a 421 or the loss at MAIL after earlier messages: a fresh connection may take it."""
    for reply in (OPENSMTPD, EXIM, Reply(451, "4.3.0", "Try later"), None):
        assert verdict(reply, "MAIL", reused=True) is Verdict.CONNECTION_LIMIT


def test_the_same_reply_on_a_fresh_connection_is_an_ordinary_deferral():
    """On a connection that carried nothing, 452 4.5.3 defers and a 421 or the loss closes."""
    assert verdict(OPENSMTPD, "MAIL") is Verdict.DEFERRED
    assert verdict(EXIM, "MAIL") is Verdict.CLOSING
    assert verdict(None, "MAIL") is Verdict.CLOSING


def test_452_4_5_3_at_rcpt_is_too_many_recipients_not_a_connection_limit():
    """The words are not the trigger: OpenSMTPD's recipient limit at RCPT stays a deferral."""
    assert verdict(Reply(452, "4.5.3", "Too many recipients"), "RCPT", reused=True) is (
        Verdict.DEFERRED
    )


def test_a_5xx_at_mail_is_a_refusal_even_on_a_reused_connection():
    """A permanent refusal is about the message, never the connection."""
    assert verdict(Reply(550, "5.7.1", "Sender blocked"), "MAIL", reused=True) is Verdict.REFUSED


def test_positive_replies_are_accepted_and_354_only_after_data():
    """250 at any step and 354 after DATA go through; 354 anywhere else is no acceptance."""
    assert verdict(Reply(250, "2.1.0", "OK"), "RCPT") is Verdict.ACCEPTED
    assert verdict(Reply(354, "", "Go ahead"), "DATA") is Verdict.ACCEPTED
    assert verdict(Reply(421, "4.4.2", "Bye"), "DOT") is Verdict.CLOSING


def test_the_known_table_names_the_per_connection_limits_by_their_words():
    """OpenSMTPD's and Exim's (and SES's) per-connection limit replies are recognised at MAIL."""
    assert known(OPENSMTPD, "MAIL") is KNOWN[0]
    assert known(EXIM, "MAIL") is KNOWN[1]
    assert known(OPENSMTPD, "RCPT") is None
    assert known(Reply(452, "4.5.3", "Too many recipients"), "MAIL") is None


def test_provider_throttling_replies_are_recognised_at_any_step():
    """The texts M365, Google and SES document, and the RFC 3463 rate-limit codes."""
    from gateway.outbound.classify import throttling

    for reply, step in (
        (Reply(432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded"), "SESSION"),
        (Reply(432, "4.3.2", "concurrent connection limit exceeded"), "MAIL"),
        (
            Reply(
                554,
                "5.2.0",
                "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
                "process message due to a permanent exception",
            ),
            "DOT",
        ),
        (Reply(421, "4.7.28", "Gmail has detected an unusual rate of unsolicited mail"), "DOT"),
        (Reply(550, "5.4.5", "Daily user sending limit exceeded."), "MAIL"),
        (Reply(550, "5.4.5", "Daily SMTP relay limit exceeded for user"), "RCPT"),
        (Reply(454, None, "Throttling failure: Maximum sending rate exceeded"), "MAIL"),
        (Reply(421, "4.7.0", "Try again later"), "MAIL"),
        (Reply(450, "4.7.1", "Rate limited"), "MAIL"),
        (Reply(451, "4.7.1", "Please slow down"), "SESSION"),
    ):
        assert throttling(reply, step) is not None, reply


def test_a_recipients_own_4_7_1_is_not_the_senders_throttling():
    """At RCPT, 450 4.7.1 (greylisting, a recipient restriction) pauses nobody; the provider
    texts still count there."""
    from gateway.outbound.classify import throttling

    greylisted = Reply(450, "4.7.1", "<grey@example.net>: Recipient address rejected: Greylisted")
    assert throttling(greylisted, "RCPT") is None
    assert throttling(Reply(451, "4.7.1", "Try later"), "DATA") is None
    assert throttling(Reply(550, "5.4.5", "Daily user sending limit exceeded."), "RCPT")


def test_other_554_5_2_0_replies_stay_permanent():
    """SendAsDenied is 554 5.2.0 too, and no throttling: matched on the quota's text only."""
    from gateway.outbound.classify import throttling

    send_as = Reply(554, "5.2.0", "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExcep")
    assert throttling(send_as, "DOT") is None
    assert verdict(send_as, "DOT") is Verdict.REFUSED
    assert throttling(Reply(451, "4.3.0", "Try later"), "MAIL") is None
    assert throttling(None, "MAIL") is None


def test_known_provider_auth_refusals_get_a_hint():
    """M365 535 5.7.139 / 5.7.3, 550 5.7.30, 554 5.2.252; Google 534 5.7.9; others none."""
    from gateway.outbound.classify import auth_hint

    assert "SMTP AUTH is disabled" in (
        auth_hint(Reply(535, "5.7.139", "Authentication unsuccessful")) or ""
    )
    assert "SMTP AUTH disabled" in (
        auth_hint(Reply(535, "5.7.3", "Authentication unsuccessful")) or ""
    )
    assert 'auth = "xoauth2"' in (
        auth_hint(Reply(550, "5.7.30", "Basic authentication is not supported")) or ""
    )
    assert "SendAsDenied" in (
        auth_hint(Reply(554, "5.2.252", "SendAsDenied; a@b not allowed")) or ""
    )
    assert "app password or OAuth" in (
        auth_hint(Reply(534, "5.7.9", "Application-specific password required")) or ""
    )
    assert auth_hint(Reply(535, "5.7.8", "Bad credentials")) is None
    assert auth_hint(None) is None
