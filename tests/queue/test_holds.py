"""Holds without sockets: hold/ and held-upstreams as the runner and the spool see them."""

from __future__ import annotations

import os

import pytest
from twisted.internet import task

from gateway.config.toml import parse
from gateway.outbound.failure import UpstreamFailure
from gateway.outbound.pool import UpstreamPool
from gateway.queue import holds
from gateway.queue.runner import DeliveryRunner
from gateway.queue.spool import (
    ACTIVE,
    DEAD,
    DEFERRED,
    DELIVERED,
    DONE,
    HOLD,
    Envelope,
    MessageGone,
    RecipientState,
    Spool,
    new_id,
)
from gateway.queue.writer import SpoolWriter
from gateway.smtp import replies
from gateway.testing.audit import CapturedAudit
from tests.outbound.fakes import RecordingConnector


def setup(tmp_path, now: float = 5000.0):
    document = {
        "queue": {"path": str(tmp_path / "spool"), "min_backoff": 60, "max_backoff": 600},
        "upstreams": {"up": {"host": "smtp.example.net"}, "other": {"host": "mx.example.org"}},
        "rules": [{"name": "all", "action": "relay", "upstream": "up", "delivery": "queue"}],
    }
    config = parse(document, "t.toml")
    spool = Spool(config.queue.path)
    spool.create()
    clock = task.Clock()
    connectors = {name: RecordingConnector(config.upstreams[name]) for name in config.upstreams}
    pools = {name: UpstreamPool(c, clock) for name, c in connectors.items()}  # type: ignore[arg-type]
    captured = CapturedAudit()
    runner = DeliveryRunner(clock, spool, config, pools.get, captured.log(), clock=lambda: now)
    runner.recover()
    return runner, connectors, spool, captured


def queue(spool: Spool, *routes: list[str]) -> str:
    """A committed message with one recipient per route (default: one, on "up")."""
    queue_id = new_id()
    writer = SpoolWriter(spool, queue_id)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    recipients = [
        RecipientState(f"r{i}@example.net", route[0], "all", route=list(route))
        for i, route in enumerate(routes or (["up"],))
    ]
    writer.commit(
        Envelope(id=queue_id, sender="app@example.com", received=4000.0, recipients=recipients)
    )
    return queue_id


def refused() -> UpstreamFailure:
    return UpstreamFailure(replies.UPSTREAM_UNREACHABLE, "up: cannot connect (refused)")


# --- held-upstreams ---------------------------------------------------------------------------


def test_held_upstreams_are_written_read_and_released(tmp_path):
    """hold adds a name once (0600 file), release takes it back, the file goes with the last."""
    spool = Spool(str(tmp_path))
    assert holds.hold(spool, "up") is True
    assert holds.hold(spool, "up") is False
    holds.hold(spool, "other")
    assert holds.held(spool) == {"up", "other"}
    assert os.stat(tmp_path / holds.HELD).st_mode & 0o777 == 0o600
    assert holds.release(spool, ["up", "never"]) == ["up"]
    assert holds.release(spool, ["other"]) == ["other"]
    assert not os.path.lexists(tmp_path / holds.HELD)


def test_a_link_in_place_of_held_upstreams_holds_nothing(tmp_path):
    """A symbolic link is never followed: not a list of held upstreams."""
    target = tmp_path / "elsewhere"
    target.write_text("up\n")
    (tmp_path / holds.HELD).symlink_to(target)
    assert holds.held(Spool(str(tmp_path))) == frozenset()


# --- the spool: a message held during its round ------------------------------------------------


def test_a_round_held_midway_is_recorded_in_hold_and_stays_held(tmp_path):
    """The CLI moved active/ID to hold/ during a delivery: the save follows it, deferred stays held."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    envelope = spool.load(ACTIVE, queue_id)
    spool.move(queue_id, ACTIVE, HOLD)
    envelope.recipients[0].attempts = 3
    spool.save(ACTIVE, envelope)
    spool.move(queue_id, ACTIVE, DEFERRED)
    assert spool.locate(queue_id) == HOLD
    assert spool.load(HOLD, queue_id).recipients[0].attempts == 3


def test_a_round_that_finishes_a_held_message_takes_it_from_hold(tmp_path):
    """Delivered (done/) or dead (dead/) at the end of the round: nothing is left to hold."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    for target in (DONE, DEAD):
        queue_id = queue(spool)
        spool.move(queue_id, ACTIVE, HOLD)
        spool.move(queue_id, ACTIVE, target)
        assert spool.locate(queue_id) == target or os.path.isdir(spool.folder(target, queue_id))


def test_the_body_of_a_message_held_midway_is_still_found(tmp_path):
    """A round's body reads (the DSN's headers) follow the message to hold/."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    spool.move(queue_id, ACTIVE, HOLD)
    assert spool.body_path(ACTIVE, queue_id) == os.path.join(spool.folder(HOLD, queue_id), "body")


def test_a_message_deleted_during_its_round_is_still_gone(tmp_path):
    """Only hold/ is followed: a message moved to trash/ raises MessageGone as before."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    queue_id = queue(spool)
    envelope = spool.load(ACTIVE, queue_id)
    spool.move(queue_id, ACTIVE, "trash")
    with pytest.raises(MessageGone):
        spool.save(ACTIVE, envelope)
    with pytest.raises(MessageGone):
        spool.move(queue_id, ACTIVE, DEFERRED)


# --- the runner ---------------------------------------------------------------------------------


def test_a_held_message_is_not_started_and_is_logged_once(tmp_path):
    """hold/ is never delivered: no session opened, one message.held; release delivers it."""
    runner, connectors, spool, captured = setup(tmp_path)
    queue_id = queue(spool)
    spool.move(queue_id, ACTIVE, HOLD)
    runner.scan()
    runner.scan()
    assert connectors["up"].opens == []
    [held] = captured.named("message.held")
    assert held["queue_id"] == queue_id and held["recipients"] == ["r0@example.net"]
    spool.move(queue_id, HOLD, ACTIVE)  # mailgate queue release
    runner.scan()
    assert len(connectors["up"].opens) == 1
    assert captured.named("message.released")[0]["queue_id"] == queue_id


def test_a_held_upstream_parks_its_mail_until_released(tmp_path):
    """A message whose only upstream is held waits in deferred/ without an attempt; released: sent."""
    runner, connectors, spool, captured = setup(tmp_path)
    holds.hold(spool, "up")
    runner.scan()
    queue_id = queue(spool)
    runner.submitted(queue_id)
    for _ in range(3):
        runner.scan()
    assert connectors["up"].opens == []
    assert spool.locate(queue_id) == DEFERRED
    assert spool.load(DEFERRED, queue_id).recipients[0].attempts == 0  # no backoff, no expiry
    assert [e["upstream"] for e in captured.named("upstream.held")] == ["up"]
    holds.release(spool, ["up"])
    runner.scan()
    assert len(connectors["up"].opens) == 1
    assert [e["upstream"] for e in captured.named("upstream.released")] == ["up"]


def test_a_held_upstream_does_not_fail_over(tmp_path):
    """Route [up, other] with up held: the recipient waits, other is not used in its place."""
    runner, connectors, spool, _ = setup(tmp_path)
    holds.hold(spool, "up")
    runner.scan()
    runner.submitted(queue(spool, ["up", "other"]))
    assert connectors["up"].opens == [] and connectors["other"].opens == []


def test_only_the_held_upstreams_recipients_wait(tmp_path):
    """One message for up and other, other held: up's recipient is delivered, other's waits."""
    runner, connectors, spool, _ = setup(tmp_path)
    holds.hold(spool, "other")
    runner.scan()
    queue_id = queue(spool, ["up"], ["other"])
    runner.submitted(queue_id)
    assert len(connectors["up"].opens) == 1 and connectors["other"].opens == []
    connectors["up"].opens[0].errback(refused())
    envelope = spool.load(DEFERRED, queue_id)
    attempts = {r.address: r.attempts for r in envelope.recipients}
    assert attempts == {"r0@example.net": 1, "r1@example.net": 0}
    assert all(r.status != DELIVERED for r in envelope.recipients)


def test_queue_started_counts_what_is_held(tmp_path):
    """queue.started says how many messages are held and which upstreams."""
    spool = Spool(str(tmp_path / "spool"))
    spool.create()
    spool.move(queue(spool), ACTIVE, HOLD)
    holds.hold(spool, "other")
    _, _, _, captured = setup(tmp_path)
    [started] = captured.named("queue.started")
    assert (started["held"], started["held_upstreams"]) == (1, ["other"])
