"""One queue-mode transaction: what its envelope records of where the message came from."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from gateway.inbound.delivery import Origin
from gateway.queue.enqueue import QueueTransaction
from gateway.queue.spool import ACTIVE, Spool
from gateway.smtp.address import parse_path
from gateway.smtp.commands import MailFrom
from gateway.smtp.data import MessageFacts

BODY = b"Subject: x\r\n\r\nbody\r\n"
DIGEST = "9e" * 32


@pytest.fixture
def spool(tmp_path: Any) -> Spool:
    s = Spool(str(tmp_path / "spool"))
    s.create()
    return s


def enqueue(spool: Spool, origin: Any) -> str:
    """Run one transaction to its commit (in this thread) and return the queue id."""
    txn = QueueTransaction(
        spool,
        MailFrom(parse_path("<app@example.com>", sender=True)),
        run_blocking=lambda function, *args: defer.succeed(function(*args)),
    )
    txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    assert txn.data().code == 354
    txn.write(BODY)
    reply = txn.finish(MessageFacts(), origin)
    assert isinstance(reply, defer.Deferred)
    assert reply.result.code == 250
    assert txn.queue_id is not None
    return txn.queue_id


def test_the_envelope_records_the_app_tls_of_the_session(spool):
    """A TLS session's version, cipher and client certificate go into the spooled envelope."""
    origin = Origin(
        "s1",
        "192.0.2.7",
        "app.test",
        "printer",
        client_tls_version="TLSv1.3",
        client_tls_cipher="TLS_AES_256_GCM_SHA384",
        client_cert_sha256=DIGEST,
    )
    envelope = spool.load(ACTIVE, enqueue(spool, origin))
    assert envelope.client_tls_version == "TLSv1.3"
    assert envelope.client_tls_cipher == "TLS_AES_256_GCM_SHA384"
    assert envelope.client_cert_sha256 == DIGEST
    assert (envelope.session_id, envelope.app) == ("s1", "printer")


def test_a_plain_session_records_the_app_tls_as_null(spool):
    """A plain session (and an origin without the TLS attributes at all): the fields are null."""
    for origin in (
        Origin("s2", "192.0.2.7", "app.test"),
        type("Bare", (), {"session_id": "s3", "client_ip": "192.0.2.8", "helo": None})(),
    ):
        envelope = spool.load(ACTIVE, enqueue(spool, origin))
        assert envelope.client_tls_version is None and envelope.client_tls_cipher is None
        assert envelope.client_cert_sha256 is None


# --- queue.min_free ------------------------------------------------------------------------------

LOW = "queue.min_free: 80.0 MiB free on the spool's file system (x), below the floor of 100.0 MiB"


def low_space_transaction(spool: Spool, low: list[bool], size: int | None = None) -> Any:
    asked: list[int] = []

    def low_space(announced: int) -> str | None:
        asked.append(announced)
        return LOW if low[0] else None

    txn = QueueTransaction(
        spool,
        MailFrom(parse_path("<app@example.com>", sender=True), size),
        run_blocking=lambda function, *args: defer.succeed(function(*args)),
        low_space=low_space,
    )
    txn.asked = asked
    return txn


def test_below_the_floor_rcpt_gets_452_4_3_1_and_the_audit_says_why(spool):
    """RCPT of a queue rule below queue.min_free: 452 4.3.1, the reason in the audit fields."""
    txn = low_space_transaction(spool, [True])
    reply = txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    assert (reply.code, reply.enhanced) == (452, "4.3.1")
    assert "low on disk space" in reply.text
    assert txn.audit_fields()["reason"] == LOW
    assert txn.recipients == []


def test_the_size_mail_announced_is_counted_against_the_floor(spool):
    """MAIL ... SIZE=n: the floor is asked with n bytes more."""
    txn = low_space_transaction(spool, [False], size=5_000_000)
    txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    assert txn.asked == [5_000_000]


def test_data_below_the_floor_gets_452_and_opens_no_file(spool):
    """DATA once the spool went below the floor after RCPT: 452 4.3.1, nothing in incoming/."""
    low = [False]
    txn = low_space_transaction(spool, low)
    txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    low[0] = True
    assert (txn.data().code, txn.queue_id) == (452, None)
    assert spool.ids("incoming") == []


def test_end_of_data_below_the_floor_commits_nothing(spool):
    """The floor is looked at again before the commit: 452 4.3.1, the body removed, no 250."""
    low = [False]
    txn = low_space_transaction(spool, low)
    txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    assert txn.data().code == 354
    txn.write(BODY)
    low[0] = True
    reply = txn.finish(MessageFacts(), Origin("s1", "192.0.2.7", "app.test", None))
    assert (reply.code, reply.enhanced) == (452, "4.3.1")
    assert spool.ids("incoming") == [] and spool.ids(ACTIVE) == []
    assert txn.audit_fields()["reason"] == LOW


def test_above_the_floor_the_message_is_queued_without_a_reason(spool):
    """With room (or min_free = 0) the transaction commits as before."""
    txn = low_space_transaction(spool, [False])
    txn.rcpt(parse_path("<ops@example.net>", sender=False), ("up",), "all")
    assert txn.data().code == 354
    txn.write(BODY)
    reply = txn.finish(MessageFacts(), Origin("s1", "192.0.2.7", "app.test", None))
    assert reply.result.code == 250
    assert "reason" not in txn.audit_fields()


def test_a_message_queued_after_an_early_refusal_carries_no_reason(spool):
    """One RCPT refused below the floor, space back for the next: the message is queued, and
    its record says no reason (the refusal was that recipient's, not the message's)."""
    low = [True]
    txn = low_space_transaction(spool, low)
    assert txn.rcpt(parse_path("<a@example.net>", sender=False), ("up",), "all").code == 452
    low[0] = False
    assert txn.rcpt(parse_path("<b@example.net>", sender=False), ("up",), "all").code == 250
    assert txn.data().code == 354
    txn.write(BODY)
    reply = txn.finish(MessageFacts(), Origin("s1", "192.0.2.7", "app.test", None))
    assert reply.result.code == 250
    assert "reason" not in txn.audit_fields()
