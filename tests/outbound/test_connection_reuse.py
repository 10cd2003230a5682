"""The shared transaction and connection reuse, without sockets: the retry on a fresh
connection after a per-connection limit, and sessions kept after a transaction that failed."""

from __future__ import annotations

from typing import Any

from gateway.outbound.failure import UpstreamFailure
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from tests.outbound.fakes import OK, FakePool, FakeSession
from tests.outbound.test_transaction import CONFIGS, delivered, opened, pool, run, transaction

LIMIT = Reply(452, "4.5.3", "Too many recipients: Too many messages sent")
EXIM = Reply(421, "", "too many messages in this connection")
LOST = UpstreamFailure(replies.UPSTREAM_LOST, "primary: upstream closed the connection")


def reused(carried: int = 3, **script: Any) -> FakePool:
    """A pool whose session already carried `carried` messages, with a fresh one to open."""
    primary = pool("primary", **script)
    primary.counts[id(primary.session)] = carried
    primary.fresh = FakeSession(CONFIGS["primary"])
    return primary


def test_a_4xx_at_mail_on_a_reused_connection_is_retried_on_a_fresh_one():
    """452 4.5.3 after 3 messages: the same upstream's new connection takes it; the pool learns 3."""
    primary = reused(MAIL=LIMIT)
    txn = transaction(primary)
    assert opened(txn, "ops@example.net") == [OK]
    assert txn.session is primary.fresh and primary.learned == 3
    assert primary.spent == [primary.session] and (primary.session, True) in primary.released
    assert txn.audit_fields()["connection_retried"] == {
        "carried": 3,
        "reply": str(LIMIT),
        "learned_limit": 3,
    }
    assert "upstream_error" not in txn.audit_fields()


def test_a_421_at_mail_on_a_reused_connection_is_retried_and_that_session_dropped():
    """Exim's 421 (and close): a fresh connection takes the message; the closing one is not kept."""
    primary = reused(MAIL=EXIM)
    txn = transaction(primary)
    assert opened(txn, "ops@example.net") == [OK]
    assert primary.released[0] == (primary.session, False) and primary.learned == 3


def test_a_connection_lost_at_mail_on_a_reused_connection_is_retried():
    """The server closed instead of answering MAIL: the fresh connection delivers."""
    primary = reused(MAIL=LOST)
    txn = transaction(primary)
    assert delivered(txn) == Reply(250, "2.0.0", "Queued as 42")
    assert primary.fresh.body and txn.failure is None


def test_the_retry_goes_to_the_same_upstream_before_any_failover():
    """With a backup configured, the primary's fresh connection is tried first."""
    primary, backup = reused(MAIL=LIMIT), pool("backup")
    txn = transaction(primary, backup)
    assert opened(txn, "ops@example.net") == [OK]
    assert txn.pool is primary and backup.senders == [] and txn.tried == []


def test_a_refusal_on_the_fresh_connection_too_is_answered_and_stops_such_retries():
    """The fresh connection answers 451 too: it was no connection limit; the app gets the 451."""
    busy = Reply(451, "4.7.1", "Rate limited")
    primary = reused(MAIL=busy)
    primary.fresh = FakeSession(CONFIGS["primary"], MAIL=busy)
    txn = transaction(primary)
    assert opened(txn, "ops@example.net") == [busy]
    assert primary.fruitless and primary.learned is None
    assert primary.released[-1] == (primary.fresh, True)  # answered: kept


def test_no_retry_while_retries_are_known_to_be_fruitless():
    """After a fruitless retry, a 4xx at MAIL on a reused connection is answered at once."""
    primary = reused(MAIL=LIMIT)
    primary.fruitless = True
    txn = transaction(primary)
    assert opened(txn, "ops@example.net") == [LIMIT]
    assert primary.fresh_asked == 0


def test_a_4xx_at_mail_on_a_fresh_connection_is_not_retried():
    """A connection that carried nothing has no per-connection limit to blame."""
    primary = reused(carried=0, MAIL=LIMIT)
    txn = transaction(primary)
    assert opened(txn, "ops@example.net") == [LIMIT] and primary.fresh_asked == 0


def test_a_5xx_at_mail_on_a_reused_connection_is_not_retried():
    """A permanent refusal is about the message: answered, and the session kept."""
    refused = Reply(550, "5.7.1", "Sender blocked")
    primary = reused(MAIL=refused)
    assert opened(transaction(primary), "ops@example.net") == [refused]
    assert primary.fresh_asked == 0 and primary.released == [(primary.session, True)]


# --- sessions kept after a transaction that delivered nothing --------------------------------


def test_every_recipient_refused_then_abort_keeps_the_session():
    """Relay: all RCPTs refused, the app sends RSET: the session goes back to its pool."""
    primary = pool("primary", RCPT=Reply(550, "5.1.1", "No such user"))
    txn = transaction(primary)
    assert run(txn.rcpt("a@example.net")).code == 550
    txn.abort("client sent RSET")
    assert primary.released == [(primary.session, True)]


def test_an_abort_while_a_command_waits_drops_the_session():
    """The app leaves while its RCPT waits for the upstream: that session is not handed on."""
    primary = pool("primary")
    txn = transaction(primary)
    assert run(txn.rcpt("a@example.net")) == OK
    primary.session.hold = True
    pending = txn.rcpt("b@example.net")
    pending.send(None)  # the RCPT is written; its reply has not come
    txn.abort("client went away")
    assert primary.released == [(primary.session, False)]
    pending.close()


def test_an_abort_after_354_drops_the_session():
    """Mid-body nothing but the body and the dot may follow: the session is dropped."""
    primary = pool("primary")
    txn = transaction(primary)
    opened(txn, "ops@example.net")
    assert run(txn.data()).code == 354
    txn.abort("message refused by gateway: bare LF")
    assert primary.released == [(primary.session, False)]


def test_a_421_at_rcpt_means_the_session_is_never_reused():
    """The upstream said it is closing at RCPT: after the transaction the session is dropped."""
    primary = pool("primary", RCPT=Reply(421, "4.4.2", "Closing"))
    txn = transaction(primary)
    assert run(txn.rcpt("a@example.net")).code == 421
    txn.abort("client sent RSET")
    assert primary.released == [(primary.session, False)]
