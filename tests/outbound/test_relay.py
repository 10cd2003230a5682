"""Cut-through relay over the shared transaction, without sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.outbound.failover import Cooldowns
from gateway.outbound.relay import RelayTransaction
from gateway.smtp import replies
from gateway.smtp.address import Address
from gateway.smtp.commands import MailFrom
from gateway.smtp.replies import Reply
from tests.outbound.fakes import OK, QUEUED, FakePool, FakeSession, clock, fired, upstreams

CONFIGS = upstreams("primary", "backup")


def relay(*pools: FakePool, sender: str = "app@example.com") -> RelayTransaction:
    mail = MailFrom(Address(sender), size=100)
    return RelayTransaction(list(pools), mail, Cooldowns(), clock())  # type: ignore[arg-type]


def pool(name: str = "primary", **script: Any) -> FakePool:
    return FakePool(CONFIGS[name], FakeSession(CONFIGS[name], **script))


def answer(d: defer.Deferred[Reply]) -> Reply:
    return fired(d)


def test_the_delivery_surface_is_kept():
    """Mode, route, upstream and the attributes the session and tests read."""
    txn = relay(pool("primary"), pool("backup"))
    assert (txn.mode, txn.route, txn.upstream.name) == ("relay", ("primary", "backup"), "primary")
    assert (txn.session, txn.failure, txn.upstream_reply, txn.aborted, txn.tried) == (
        None,
        None,
        None,
        False,
        [],
    )
    assert not txn.handed_over


def test_a_whole_message_goes_through():
    """RCPT, DATA (354 for the app), the body and the upstream's 250."""
    primary = pool("primary")
    txn = relay(primary)
    assert answer(txn.rcpt(Address("ops@example.net"), ("primary",), "all")) == OK
    assert answer(txn.data()) == replies.START_DATA
    txn.write(b"Subject: x\r\n\r\n.body\r\n")
    assert answer(txn.finish()) == QUEUED and txn.handed_over
    assert primary.session.lines[0] == b"MAIL FROM:<app@example.com> SIZE=100"
    assert primary.session.body == b"Subject: x\r\n\r\n..body\r\n.\r\n"
    assert txn.audit_fields()["tls_version"] == "TLSv1.3"


def test_the_upstreams_421_reaches_the_app_as_451():
    """A 421 at RCPT is the upstream closing, not the app's session: the app gets 451."""
    txn = relay(pool("primary", RCPT=Reply(421, "4.7.0", "Closing")))
    assert answer(txn.rcpt(Address("ops@example.net"))) == Reply(451, "4.7.0", "Closing")
    assert txn.upstream_reply == Reply(421, "4.7.0", "Closing")


def test_a_refused_mail_is_every_later_rcpts_answer():
    """MAIL 550 on the only upstream: the first and later RCPTs get it, nothing else is sent."""
    refused = Reply(550, "5.7.1", "Sender not allowed")
    primary = pool("primary", MAIL=refused)
    txn = relay(primary)
    assert answer(txn.rcpt(Address("a@example.net"))) == refused
    assert answer(txn.rcpt(Address("b@example.net"))) == refused
    assert primary.session.lines == [b"MAIL FROM:<app@example.com> SIZE=100"]  # no PIPELINING
    assert answer(txn.data()) == refused


def test_abort_is_recorded_as_the_gateways_decision():
    """The app's message refused mid-body: `gateway_abort`, the session dropped."""
    primary = pool("primary")
    txn = relay(primary)
    answer(txn.rcpt(Address("ops@example.net")))
    answer(txn.data())
    txn.abort("message refused by gateway: size exceeds")
    assert txn.aborted and primary.released == [(primary.session, False)]
    assert txn.audit_fields()["gateway_abort"] == "message refused by gateway: size exceeds"
