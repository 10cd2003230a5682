"""One delivery round over the shared transaction, without sockets: fake pools, a real spool."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from gateway.outbound.failover import Cooldowns
from gateway.outbound.failure import UpstreamFailure
from gateway.queue.attempt import STOPPING, DeliveryAttempts, Round
from gateway.queue.spool import (
    ACTIVE,
    DELIVERED,
    FAILED,
    PENDING,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
)
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.testing.audit import CapturedAudit
from tests.outbound.fakes import OK, FakePool, FakeSession, clock, fired, lookup, upstreams

CONFIGS = upstreams("primary", "backup", failover_cooldown=60)
BODY = b"Subject: x\r\n\r\n.dot line\r\nbody\r\n"


class Harness:
    def __init__(self, tmp_path: Any, *pools: FakePool) -> None:
        self.spool = Spool(str(tmp_path / "spool"))
        self.spool.create()
        self.audit = CapturedAudit()
        self.reactor = clock(1000)
        self.cooldowns = Cooldowns()
        self.duplicates: dict[str, set[str]] = {}
        self.attempts = DeliveryAttempts(
            self.reactor,
            self.spool,
            lookup(pools),
            self.cooldowns,
            self.audit.log(),
            lambda: 5000.0,  # the wall clock: spool times only
            self.duplicates,
        )

    def queue(
        self, *recipients: str, sender: str = "app@example.com", route: tuple[str, ...] = ()
    ) -> Envelope:
        queue_id = new_id()
        writer = SpoolWriter(self.spool, queue_id)
        writer.write(BODY)
        hops = list(route or ("primary", "backup"))
        envelope = Envelope(
            id=queue_id,
            sender=sender,
            received=4000.0,
            size=len(BODY),
            recipients=[RecipientState(r, hops[0], "all", route=hops) for r in recipients],
        )
        writer.commit(envelope)
        return envelope

    def run(self, envelope: Envelope) -> Round:
        return fired(defer.Deferred.fromCoroutine(self.attempts.run(envelope)))

    def attempt_records(self) -> list[dict[str, Any]]:
        return self.audit.named("delivery.attempt")


def pool(name: str = "primary", **script: Any) -> FakePool:
    return FakePool(CONFIGS[name], FakeSession(CONFIGS[name], **script))


def test_a_delivered_round_sends_the_stored_body_and_marks_each_recipient(tmp_path):
    """MAIL, each RCPT, DATA, the body dot-stuffed; the recipients are delivered, not in flight."""
    primary = pool("primary")
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net", "b@example.net")
    round_ = h.run(envelope)
    assert round_.attempted and round_.opened
    assert [r.status for r in envelope.recipients] == [DELIVERED, DELIVERED]
    assert not any(r.in_flight for r in envelope.recipients)
    assert primary.session.lines == [
        f"MAIL FROM:<app@example.com> SIZE={len(BODY)}".encode(),
        b"RCPT TO:<a@example.net>",
        b"RCPT TO:<b@example.net>",
        b"DATA",
    ]
    assert primary.session.body == BODY.replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n"


def test_the_attempt_record_carries_the_upstream_session(tmp_path):
    """Regression: delivery.attempt names TLS, the AUTH user and the upstream's reply."""
    h = Harness(tmp_path, pool("primary"))
    h.run(h.queue("a@example.net"))
    [record] = h.attempt_records()
    assert record["tls_version"] == "TLSv1.3" and record["auth_user"] == "relay@example.test"
    assert (record["upstream"], record["upstream_code"]) == ("primary", 250)
    assert record["recipients"] == [
        {"address": "a@example.net", "reply": "250 2.0.0 Queued as 42", "result": "delivered"}
    ]


def test_the_round_gives_message_result_its_upstream_fields(tmp_path):
    """Regression: what message.result adds of the upstream is the round's transaction's."""
    h = Harness(tmp_path, pool("primary"))
    round_ = h.run(h.queue("a@example.net"))
    fields = round_.upstream_fields()
    assert fields["tls_version"] == "TLSv1.3" and fields["auth_user"] == "relay@example.test"
    assert fields["upstream"] == "primary"


def test_two_routes_keep_only_the_fields_they_share(tmp_path):
    """Groups that went to different upstreams: TLS kept when equal, the upstream name dropped."""
    primary, backup = pool("primary"), pool("backup")
    h = Harness(tmp_path, primary, backup)
    envelope = h.queue("a@example.net", route=("primary",))
    envelope.recipients.append(RecipientState("b@example.org", "backup", "other", route=["backup"]))
    fields = h.run(envelope).upstream_fields()
    assert fields["tls_version"] == "TLSv1.3" and "upstream" not in fields


def test_a_refused_rcpt_fails_and_an_accepted_one_is_delivered(tmp_path):
    """550 to one RCPT fails that recipient; the others get the message."""
    unknown = Reply(550, "5.1.1", "No such user")
    h = Harness(tmp_path, pool("primary", RCPT=[unknown, OK]))
    envelope = h.queue("a@example.net", "b@example.net")
    h.run(envelope)
    assert [r.status for r in envelope.recipients] == [FAILED, DELIVERED]
    assert envelope.recipients[0].last_reply == str(unknown)


def test_no_recipient_accepted_returns_the_session_without_data(tmp_path):
    """Every RCPT refused: no DATA, the session goes back to the pool for the next message."""
    primary = pool("primary", RCPT=Reply(450, "4.2.1", "Mailbox busy"))
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net")
    h.run(envelope)
    assert envelope.recipients[0].status == PENDING and b"DATA" not in primary.session.lines
    assert primary.released == [(primary.session, True)]


def test_the_sender_is_sent_as_its_path_in_ascii(tmp_path):
    """MAIL is built as in relay: the sender as `Address.path()` writes it, byte for byte."""
    primary = pool("primary", capabilities={})
    h = Harness(tmp_path, primary)
    h.run(h.queue("a@example.net", sender='"odd sender"@example.com'))
    assert primary.session.lines[0] == b'MAIL FROM:<"odd sender"@example.com>'


def test_a_non_ascii_recipient_is_not_sent_without_smtputf8(tmp_path):
    """Regression: a non-ASCII spooled address went out raw in UTF-8; now it needs SMTPUTF8."""
    primary = pool("primary")
    h = Harness(tmp_path, primary)
    envelope = h.queue("jörg@example.net", "b@example.net")
    h.run(envelope)
    assert [r.status for r in envelope.recipients] == [FAILED, DELIVERED]
    assert envelope.recipients[0].last_reply == str(replies.UPSTREAM_NO_SMTPUTF8)
    assert all(line.isascii() for line in primary.session.lines)


def test_a_control_character_fails_only_its_recipient(tmp_path):
    """Regression: a hand-edited address with CR LF used to fail the whole group; now only itself."""
    primary = pool("primary")
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net\r\nRSET", "b@example.net")
    h.run(envelope)
    assert [r.status for r in envelope.recipients] == [FAILED, DELIVERED]
    assert envelope.recipients[0].last_reply == str(replies.BAD_SPOOLED_ADDRESS)


def test_the_null_sender_asks_the_pool_for_the_empty_sender(tmp_path):
    """Regression: a DSN's <> reached the pool as None (a "$sender" upstream then said "needs the
    envelope sender" and retried for days); it is "" as in relay, refused as the null sender."""
    primary = pool("primary")
    h = Harness(tmp_path, primary)
    h.run(h.queue("a@example.net", sender=""))
    assert primary.senders == [""] and primary.session.lines[0].startswith(b"MAIL FROM:<> ")


def test_a_permanent_refusal_to_open_stops_the_failover(tmp_path):
    """Regression: queue mode went on to the next upstream after a final refusal; relay did not."""
    refused = Reply(554, "5.7.1", "Account suspended")
    primary = FakePool(CONFIGS["primary"], failure=UpstreamFailure(refused, "primary: no", refused))
    backup = pool("backup")
    h = Harness(tmp_path, primary, backup)
    envelope = h.queue("a@example.net")
    h.run(envelope)
    assert backup.senders == [] and envelope.recipients[0].status == FAILED


def test_cool_downs_are_ordered_on_the_reactors_clock(tmp_path):
    """Regression: queue mode ordered cool-downs by the wall clock but set them on the reactor's,
    so a primary that just failed was tried first again; now both use the reactor's."""
    down = UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "primary: cannot connect")
    primary, backup = FakePool(CONFIGS["primary"], failure=down), pool("backup")
    h = Harness(tmp_path, primary, backup)
    h.run(h.queue("a@example.net"))
    h.reactor.advance(30)  # within the primary's 60 s cool-down
    h.run(h.queue("b@example.net"))
    assert len(primary.senders) == 1 and len(backup.senders) == 2
    second = h.attempt_records()[1]
    assert second["upstream"] == "backup" and "upstreams_tried" not in second


def test_mail_4xx_fails_over_within_the_round(tmp_path):
    """MAIL 451 on the primary: the backup delivers in the same round; both are in the record."""
    primary, backup = pool("primary", MAIL=Reply(451, "4.3.0", "Later")), pool("backup")
    h = Harness(tmp_path, primary, backup)
    envelope = h.queue("a@example.net")
    h.run(envelope)
    assert envelope.recipients[0].status == DELIVERED
    [record] = h.attempt_records()
    assert record["upstream"] == "backup"
    assert record["upstreams_tried"] == [
        {"upstream": "primary", "reason": "MAIL answered 451 4.3.0"}
    ]


def test_recipients_are_in_flight_on_disk_before_mail(tmp_path):
    """The duplicate window starts on disk once the session is in hand, before MAIL goes out."""
    primary = pool("primary")
    primary.session.hold = True
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net")
    d = defer.Deferred.fromCoroutine(h.attempts.run(envelope))
    assert primary.session.lines[0].startswith(b"MAIL")
    assert [r.in_flight for r in h.spool.load(ACTIVE, envelope.id).recipients] == [True]
    while primary.session.held:
        primary.session.answer()
    fired(d)
    assert not envelope.recipients[0].in_flight


def test_a_dot_without_a_reply_stays_in_flight_and_is_flagged_next_time(tmp_path):
    """The final dot went out and the connection broke: possibly delivered, logged next attempt."""
    lost = UpstreamFailure(replies.UPSTREAM_LOST, "primary: upstream closed the connection")
    h = Harness(tmp_path, pool("primary", END=[lost, OK]))
    envelope = h.queue("a@example.net")
    h.run(envelope)
    assert envelope.recipients[0].status == PENDING and envelope.recipients[0].in_flight
    assert h.duplicates == {envelope.id: {"a@example.net"}}
    h.run(envelope)
    assert h.attempt_records()[1]["possible_duplicate"] == ["a@example.net"]


def test_stopping_while_a_session_opens_sends_nothing(tmp_path):
    """`stop` during acquire: the session comes back unused, the recipient waits with 421."""
    primary = pool("primary")
    primary.hold()
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net")
    d = defer.Deferred.fromCoroutine(h.attempts.run(envelope))
    h.attempts.stop()
    primary.give()
    round_ = fired(d)
    assert not round_.opened and primary.session.lines == []
    assert envelope.recipients[0].last_reply == str(STOPPING)
    assert h.attempt_records()[0]["gateway_abort"] == "gateway stopping"


def test_a_route_with_nothing_configured_defers_with_its_route(tmp_path):
    """A reload removed every upstream of the route: 451 4.3.5 naming it, no session."""
    h = Harness(tmp_path)
    envelope = h.queue("a@example.net", route=("gone",))
    round_ = h.run(envelope)
    assert round_.attempted and not round_.opened
    assert envelope.recipients[0].last_reply == (
        "451 4.3.5 no upstream of the route ['gone'] is configured"
    )


def test_a_message_deleted_during_its_round_is_gone(tmp_path):
    """The operator deleted it before MAIL: the round raises MessageGone, nothing is sent."""
    primary = pool("primary")
    h = Harness(tmp_path, primary)
    envelope = h.queue("a@example.net")
    h.spool.move(envelope.id, ACTIVE, "trash")
    with pytest.raises(MessageGone):
        h.run(envelope)
    assert primary.session.lines == [] and primary.released == [(primary.session, True)]
