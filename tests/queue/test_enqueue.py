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
