"""What a delivery round leaves: backoff, expiry, the DSN, the record, the next folder."""

from __future__ import annotations

from typing import Any

from gateway.config import toml as configuration
from gateway.queue.settle import Settler
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DELIVERED,
    FAILED,
    Envelope,
    RecipientState,
    Spool,
    new_id,
)
from gateway.queue.writer import SpoolWriter
from gateway.testing.audit import CapturedAudit

UPSTREAM = {"upstream": "up", "tls_version": "TLSv1.3", "auth_user": "relay@example.test"}


class Harness:
    def __init__(self, tmp_path: Any, now: float = 5000.0, **queue: Any) -> None:
        document = {
            "queue": {"path": str(tmp_path / "spool"), "min_backoff": 60, **queue},
            "upstreams": {"up": {"host": "smtp.example.net"}},
            "rules": [
                {
                    "name": "all",
                    "action": "relay",
                    "upstream": "up",
                    "delivery": "queue",
                    "senders": ["*@example.com"],  # a DSN may go back to these senders
                    "bounce_to_senders": True,
                }
            ],
        }
        config = configuration.parse(document, "t.toml")
        self.spool = Spool(config.queue.path)
        self.spool.create()
        self.audit = CapturedAudit()
        self.now = now
        self.bounces: list[str] = []
        self.results: list[dict[str, Any]] = []
        self.settler = Settler(
            self.spool,
            config,
            self.audit.log(),
            lambda: self.now,
            self.bounces.append,
            self.results.append,
        )

    def queue(self, *recipients: str, received: float = 4000.0) -> Envelope:
        queue_id = new_id()
        writer = SpoolWriter(self.spool, queue_id)
        writer.write(b"Subject: x\r\nMessage-ID: <m@example.com>\r\n\r\nbody\r\n")
        envelope = Envelope(
            id=queue_id,
            sender="app@example.com",
            received=received,
            recipients=[RecipientState(r, "up", "all", attempts=1) for r in recipients],
        )
        writer.commit(envelope)
        return envelope


def test_a_pending_recipient_defers_the_message_by_the_backoff(tmp_path):
    """Still pending: deferred/, due min_backoff later, message.deferred, no message.result."""
    h = Harness(tmp_path)
    envelope = h.queue("a@example.net")
    assert h.settler.settle(envelope, opened=False) == 5060.0
    assert h.spool.locate(envelope.id) == DEFERRED
    [deferred] = h.audit.named("message.deferred")
    assert deferred["next_attempt"] == "1970-01-01T01:24:20Z"
    assert h.audit.named("message.result") == [] and h.results == []


def test_a_delivered_message_is_removed_and_its_result_names_the_upstream_session(tmp_path):
    """Every recipient delivered: gone from the spool; message.result has the round's TLS fields."""
    h = Harness(tmp_path)
    envelope = h.queue("a@example.net")
    envelope.recipients[0].status = DELIVERED
    assert h.settler.settle(envelope, upstream=UPSTREAM) is None
    assert h.spool.locate(envelope.id) is None
    [result] = h.audit.named("message.result")
    assert result["outcome"] == "delivered" and result["delivery"] == "queue"
    assert (result["tls_version"], result["auth_user"]) == ("TLSv1.3", "relay@example.test")
    assert h.results[0]["upstream"] == "up" and h.results[0]["rules"] == ["all"]


def test_reaching_max_age_fails_expired_recipients_with_a_dsn(tmp_path):
    """Past max_age: the recipient fails as expired, a DSN is queued, the message is a dead letter."""
    h = Harness(tmp_path, now=4000.0 + 3600, max_age=3600)
    envelope = h.queue("a@example.net")
    assert h.settler.settle(envelope, opened=False) is None
    recipient = envelope.recipients[0]
    assert (recipient.status, recipient.expired, recipient.bounced) == (FAILED, True, True)
    assert h.spool.locate(envelope.id) == DEAD
    [bounce_id] = h.bounces
    bounce = h.spool.load(ACTIVE, bounce_id)
    assert bounce.sender == "" and bounce.bounce_of == envelope.id
    assert [r.address for r in bounce.recipients] == ["app@example.com"]
    assert [e["event"] for e in h.audit.events][-3:] == [
        "message.bounced",
        "message.result",
        "message.dead",
    ]


def test_an_outcome_that_cannot_be_written_is_kept_in_memory(tmp_path, monkeypatch):
    """The save fails: queue.write_failed, a min_backoff wait, and `restore` re-applies it."""
    h = Harness(tmp_path)
    envelope = h.queue("a@example.net")
    envelope.recipients[0].status = DELIVERED

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.spool, "save", full)
    assert h.settler.settle(envelope) == 5060.0
    [failed] = h.audit.named("queue.write_failed")
    assert failed["delivered_not_recorded"] == ["a@example.net"]
    monkeypatch.undo()
    again = h.spool.load(DEFERRED, envelope.id)
    assert again.recipients[0].status != DELIVERED  # on disk still pending
    h.settler.restore(again)
    assert again.recipients[0].status == DELIVERED and not again.recipients[0].in_flight


def test_a_deleted_message_result_says_deleted(tmp_path):
    """`result(..., "deleted")` records the operator's delete as the outcome."""
    h = Harness(tmp_path)
    envelope = h.queue("a@example.net")
    h.settler.result(envelope, "deleted")
    [result] = h.audit.named("message.result")
    assert result["outcome"] == "deleted" and "tls_version" not in result


def test_the_result_carries_the_app_tls_recorded_at_enqueue(tmp_path):
    """message.result has the envelope's client_tls_version and _cipher (null for a plain app or an
    older envelope) and client_cert_sha256 when the app presented a certificate."""
    h = Harness(tmp_path)
    plain = h.queue("a@example.net")
    h.settler.result(plain, "deleted")
    tls = h.queue("b@example.net")
    tls.client_tls_version, tls.client_tls_cipher = "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384"
    tls.client_cert_sha256 = "cd" * 32
    h.settler.result(tls, "deleted")
    first, second = h.audit.named("message.result")
    assert (first["client_tls_version"], first["client_tls_cipher"]) == (None, None)
    assert "client_cert_sha256" not in first
    assert second["client_tls_version"] == "TLSv1.2"
    assert second["client_tls_cipher"] == "ECDHE-RSA-AES256-GCM-SHA384"
    assert second["client_cert_sha256"] == "cd" * 32
