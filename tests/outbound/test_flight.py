"""RFC 2920 flights without sockets: DATA with MAIL and the RCPTs (queue delivery), the pool's
RSET first on a reused session, and replies of a failed flight that are nobody's result."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pool import UpstreamPool
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from tests.outbound.fakes import GO_AHEAD, OK, QUEUED, FakePool, FakeSession, fired
from tests.outbound.test_pool import Connector
from tests.outbound.test_transaction import CONFIGS, pool, run, transaction

PIPELINING = {"PIPELINING": "", "8BITMIME": "", "SIZE": "10000000"}
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")
BUSY = Reply(450, "4.2.1", "Mailbox busy")
NO_VALID = Reply(554, "5.5.1", "Error: no valid recipients")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
LOST = UpstreamFailure(replies.UPSTREAM_LOST, "primary: upstream closed the connection")


def piped(name: str = "primary", **script: Any) -> FakePool:
    return pool(name, capabilities=dict(PIPELINING), **script)


def queued(txn: Any, *recipients: str) -> list[Reply]:
    """Queue delivery's opening: MAIL, the RCPTs and DATA asked for in one flight."""
    return fired(defer.Deferred.fromCoroutine(txn.open(list(recipients), data=True)))


def verbs(lines: list[bytes]) -> list[bytes]:
    return [line.split(b" ", 1)[0].split(b":", 1)[0] for line in lines]


def test_queue_delivery_sends_mail_every_rcpt_and_data_in_one_write():
    """PIPELINING offered: one write, MAIL, RCPT, RCPT, DATA; `data` gives DATA's reply from
    it without sending DATA again."""
    primary = piped()
    primary.session.hold = True
    txn = transaction(primary)
    d = defer.Deferred.fromCoroutine(txn.open(["a@example.net", "b@example.net"], data=True))
    assert [verbs(batch) for batch in primary.session.batches] == [
        [b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    ]
    primary.session.answer()
    assert fired(d) == [OK, OK]
    assert run(txn.data()) == GO_AHEAD and verbs(primary.session.lines).count(b"DATA") == 1


def test_without_pipelining_queue_delivery_waits_for_each_reply():
    """No PIPELINING: MAIL alone, each RCPT after the last reply, DATA its own step."""
    primary = pool("primary", capabilities={})
    txn = transaction(primary)
    assert queued(txn, "a@example.net", "b@example.net") == [OK, OK]
    assert primary.session.batches == []
    assert verbs(primary.session.lines) == [b"MAIL", b"RCPT", b"RCPT"]
    assert run(txn.data()) == GO_AHEAD and verbs(primary.session.lines)[-1] == b"DATA"


def test_relay_cut_through_never_puts_data_in_the_flight():
    """The relay's open (no `data`): MAIL and the RCPTs pipelined, DATA waits for the app."""
    primary = piped()
    txn = transaction(primary)
    assert fired(defer.Deferred.fromCoroutine(txn.open(["a@example.net"]))) == [OK]
    assert [verbs(b) for b in primary.session.batches] == [[b"MAIL", b"RCPT"]]


def test_some_recipients_refused_keep_their_own_replies_and_the_rest_go():
    """One 550 in the flight: that recipient has the upstream's 550, the other DATA's 354."""
    primary = piped(RCPT=[OK, NO_SUCH_USER])
    txn = transaction(primary)
    assert queued(txn, "a@example.net", "bad@example.net") == [OK, NO_SUCH_USER]
    assert run(txn.data()) == GO_AHEAD
    assert run(txn.end()) == QUEUED and txn.upstream_reply == QUEUED


def test_every_recipient_refused_makes_datas_503_nobodys_result():
    """All RCPTs refused: DATA's 554 is no recipient's reply and not the upstream's last word;
    the session is reusable, nothing failed, no dot was sent."""
    primary = piped(RCPT=[NO_SUCH_USER, BUSY], DATA=NO_VALID)
    txn = transaction(primary)
    assert queued(txn, "a@example.net", "b@example.net") == [NO_SUCH_USER, BUSY]
    assert txn.failure is None and txn.upstream_reply == BUSY
    assert primary.session.body == b"" and not txn.dot_sent
    txn.release(reusable=True)  # what the queue does when no recipient was accepted
    assert primary.released == [(primary.session, True)]


def test_a_354_after_every_recipient_was_refused_gets_the_lone_dot():
    """RFC 2920 3.1: DATA accepted although no RCPT was: a single dot, no content; its reply
    is nobody's result and the session stays reusable."""
    primary = piped(RCPT=NO_SUCH_USER, END=Reply(554, "5.5.1", "No recipients"))
    txn = transaction(primary)
    assert queued(txn, "a@example.net") == [NO_SUCH_USER]
    assert primary.session.body == b".\r\n" and not txn.dot_sent
    assert txn.failure is None and txn.upstream_reply == NO_SUCH_USER
    txn.release(reusable=True)
    assert primary.released == [(primary.session, True)]


def test_no_lone_dot_where_the_upstream_said_yes_to_a_recipient():
    """A RCPT answered 354 (nonsense: refused here) then DATA 354: a dot could deliver an empty
    message, so none is sent and the session is reset, not reused."""
    primary = piped(RCPT=Reply(354, "", "go ahead"))
    txn = transaction(primary)
    [answer] = queued(txn, "a@example.net")
    assert answer.code == 451 and answer.enhanced == "4.5.0" and primary.session.body == b""
    txn.release(reusable=True)
    assert primary.released == [(primary.session, False)]


def test_mail_refused_in_a_flight_fails_over_without_the_503s():
    """MAIL 451 on the primary: its RCPTs' and DATA's 503s are recorded nowhere, the backup
    delivers, the primary's session goes back to its pool (failover as without PIPELINING)."""
    busy = Reply(451, "4.3.0", "Try again later")
    primary = piped(MAIL=busy, RCPT=NEED_MAIL, DATA=NEED_MAIL)
    backup = piped("backup")
    txn = transaction(primary, backup)
    assert queued(txn, "a@example.net", "b@example.net") == [OK, OK]
    assert primary.released == [(primary.session, True)] and txn.pool is backup
    assert txn.tried == [{"upstream": "primary", "reason": "MAIL answered 451 4.3.0"}]
    assert run(txn.data()) == GO_AHEAD


def test_mail_refused_on_the_last_upstream_is_every_recipients_answer():
    """MAIL 550, nothing else to try: each recipient gets MAIL's 550, never a 503."""
    refused = Reply(550, "5.7.1", "Sender not allowed")
    primary = piped(MAIL=refused, RCPT=NEED_MAIL, DATA=NEED_MAIL)
    txn = transaction(primary)
    assert queued(txn, "a@example.net", "b@example.net") == [refused, refused]
    assert txn.upstream_reply == refused and primary.released == [(primary.session, True)]


def test_mail_refused_and_data_354_gets_the_lone_dot_before_failover():
    """MAIL 451, DATA answered 354 anyway: the single dot ends it in step, then the backup."""
    primary = piped(MAIL=Reply(451, "4.3.0", "Later"), RCPT=NEED_MAIL)
    txn = transaction(primary, piped("backup"))
    assert queued(txn, "a@example.net") == [OK]
    assert primary.session.body == b".\r\n" and primary.released == [(primary.session, True)]


def test_the_connection_lost_mid_flight_defers_the_accepted_and_drops_the_session():
    """Lost at the second RCPT: the unanswered recipient gets the failure's reply, the
    session is dropped, nothing more is read or sent."""
    primary = piped(RCPT=[OK, LOST], DATA=LOST)
    txn = transaction(primary)
    answers = queued(txn, "a@example.net", "b@example.net")
    assert answers[1] == replies.UPSTREAM_LOST and txn.failure is not None
    assert primary.released == [(primary.session, False)]
    assert run(txn.data()) == replies.UPSTREAM_LOST


def test_a_reused_session_sends_the_pools_rset_in_the_same_write():
    """Handed out with `reset_due`: RSET, MAIL, RCPT and DATA go out together."""
    primary = piped()
    primary.session.reset_due = True
    txn = transaction(primary)
    assert queued(txn, "a@example.net") == [OK]
    assert [verbs(b) for b in primary.session.batches] == [[b"RSET", b"MAIL", b"RCPT", b"DATA"]]
    assert primary.session.reset_due is False and primary.staled == []


def test_an_rset_refused_closes_that_session_and_the_next_one_takes_the_message():
    """RSET 500: MAIL's, RCPT's and DATA's replies are read in step and recorded nowhere; a
    354 among them means no dot (it could deliver an empty message): reset, not QUIT; the
    pool is asked again and the next session carries the message."""
    stale = FakeSession(CONFIGS["primary"], capabilities=dict(PIPELINING))
    stale.script["RSET"] = Reply(500, "5.5.1", "Huh")
    stale.reset_due = True
    primary = FakePool(CONFIGS["primary"], stale)
    txn = transaction(primary)
    fresh = FakeSession(CONFIGS["primary"], capabilities=dict(PIPELINING))
    stale.script["MAIL"] = [OK]  # once; the pool then hands out the next session
    original = primary.acquire

    def handed(*args: Any, **kwargs: Any) -> Any:
        if primary.senders:  # the stale one went out first: now the next one
            primary.session = fresh
        return original(*args, **kwargs)

    primary.acquire = handed  # type: ignore[method-assign]
    assert queued(txn, "a@example.net") == [OK]
    assert primary.staled == [(stale, False)] and stale.body == b""
    assert txn.session is fresh and run(txn.data()) == GO_AHEAD
    assert [verbs(b) for b in fresh.batches] == [[b"MAIL", b"RCPT", b"DATA"]]
    assert txn.upstream_reply == GO_AHEAD and primary.released == []


def test_an_rset_refused_in_a_relay_flight_is_closed_with_quit():
    """Relay (no DATA in the flight): after RSET 500, MAIL and RCPT answered: nothing is left
    open, so the session is closed with QUIT (`usable`), and the next one is used."""
    stale = FakeSession(CONFIGS["primary"], capabilities=dict(PIPELINING))
    stale.script["RSET"] = [Reply(500, "5.5.1", "Huh")]
    stale.reset_due = True
    primary = FakePool(CONFIGS["primary"], stale)
    txn = transaction(primary)
    assert fired(defer.Deferred.fromCoroutine(txn.open(["a@example.net"]))) == [OK]
    assert primary.staled == [(stale, True)]
    assert verbs(stale.lines) == [b"RSET", b"MAIL", b"RCPT", b"MAIL", b"RCPT"]  # then the next


def test_an_rset_lost_is_no_connection_limit():
    """The reused session was gone (RSET lost): not MAIL refused, so no fresh-connection retry
    and nothing learned; the pool is simply asked again."""
    stale = FakeSession(CONFIGS["primary"], capabilities=dict(PIPELINING))
    stale.script.update(RSET=[LOST], MAIL=[LOST, OK], RCPT=[LOST, OK], DATA=[LOST, GO_AHEAD])
    stale.reset_due = True
    primary = FakePool(CONFIGS["primary"], stale)
    primary.counts[id(stale)] = 3
    txn = transaction(primary)
    assert queued(txn, "a@example.net") == [OK]
    assert primary.staled == [(stale, False)] and primary.fresh_asked == 0
    assert primary.learned is None and txn.retried == {}


def test_the_pool_hands_out_a_pipelining_session_with_its_rset_due_not_sent():
    """Reuse where PIPELINING is offered: no RSET round trip in the pool, `reset_due` set; an
    upstream without PIPELINING still gets the pool's own RSET, waited for."""
    for capabilities, rset_sent in ((dict(PIPELINING), False), ({}, True)):
        connector = Connector()
        upstream = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
        session = fired(upstream.acquire())
        session.capabilities = capabilities
        upstream.release(session, reusable=True)
        assert fired(upstream.acquire()) is session
        assert (b"RSET" in session.lines, session.reset_due) == (rset_sent, not rset_sent)


def test_a_stale_session_is_closed_with_quit_or_reset_when_not_usable():
    """`UpstreamPool.stale`: QUIT where nothing is left open, a reset where DATA was left 354."""
    connector = Connector()
    upstream = UpstreamPool(connector, task.Clock())  # type: ignore[arg-type]
    quitting, resetting = fired(upstream.acquire()), fired(upstream.acquire())
    upstream.stale(quitting)
    upstream.stale(resetting, usable=False)
    assert connector.quit == [quitting] and resetting.protocol.aborted


def test_our_bug_mid_flight_never_hands_the_session_on():
    """Our own code raising while a flight's replies are still due (here the pacer, at the
    reply to MAIL): the error reaches the caller and the session is not reusable (it would be
    out of step with the upstream's replies)."""
    primary = piped()
    txn = transaction(primary)

    def broken(*_: Any) -> None:
        raise RuntimeError("our bug")

    txn.pacer.check = broken  # type: ignore[method-assign]
    d = defer.Deferred.fromCoroutine(txn.open(["a@example.net", "b@example.net"], data=True))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)
    txn.abort("internal error")
    assert primary.released == [(primary.session, False)]
